"""Making backups: a snapshot to a RAW or QCOW2 file, or the changes since an older one to an rbd diff.

Every backup is written under a temporary name, synced, and published with its
manifest; the manifest is the commit point (without it the data file goes too).
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from .. import __version__, crc32c, exits
from ..ceph import Cluster
from ..errors import BackupError, NotFoundError, UsageError
from ..progress import Progress
from .block_writer import Blocks, BlockWriter
from .file_crc import ALGORITHM as FILE_ALGORITHM
from .files import AtomicFile, fsync_directory, remove_stale_temps
from .formats import FULL_FORMATS
from .formats import manifest as manifests
from .formats.checksum import ALGORITHM as CONTENT_ALGORITHM
from .formats.checksum import DIFF_ALGORITHM, FILE_HASHES, ContentDigest
from .formats.manifest import DIFF_FORMAT, Manifest
from .formats.rbddiff import DiffWriter
from .rbd_io import MAX_OPS, READ_BYTES, WINDOW_BYTES, RbdSource, source_facts
from .results import BackupPlan, BackupResult, SourceFacts
from .sealing.plain import SealedBlocks
from .stream import CHUNK, MiB, check_cancel, nonzero_runs, split_at
from .window import Job, ReadWindow, read_chunk_parts

log = logging.getLogger(__name__)

#: the allocation map of an incremental is asked for this much of the image at a time
MAP_WINDOW = 64 * CHUNK


def _reserve_name(dest: Path, name: str) -> Path:
    """The final path for a new backup; a committed one (with manifest) is never replaced."""
    final = dest / name
    committed = manifests.manifest_path(final)
    if committed.exists():
        raise BackupError(f"{final}: a backup of this snapshot exists already (remove it and its manifest "
                          f"to make a new one)")
    if final.exists():          # published data whose manifest never was: an interrupted backup's remains
        log.info("removing %s: its backup was interrupted before the manifest was written", final)
        final.unlink()
    return final


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_backup(cluster: Cluster, plan: BackupPlan, *, progress: Progress | None = None,
               direct_io: bool = True) -> BackupResult:
    spec = plan.spec
    started = time.monotonic()
    with cluster.image(spec.pool, spec.image, snapshot=spec.snapshot, read_only=True) as image:
        info = source_facts(image, spec)
        source = RbdSource(image, str(spec))
        if plan.since is None:
            return write_full_backup(source, info, plan, progress=progress, direct_io=direct_io, started=started)
        older = plan.since.snap
        if older not in info.snapshots:
            raise NotFoundError(f"snapshot {plan.since}: does not exist")
        if info.snapshots[older] >= info.snapshot_id:
            raise UsageError(f"--since {plan.since} is not older than {spec}")
        return write_incremental_backup(source, info, plan, progress=progress, started=started)


def write_full_backup(source, info: SourceFacts, plan: BackupPlan, *, progress: Progress | None = None,
                      direct_io: bool = True, started: float | None = None,
                      made_from: list[str] | None = None) -> BackupResult:
    """A RAW or QCOW2 backup of ``source`` (a ``stream.Source``) and its manifest, published atomically.

    ``made_from``: the backup files a synthetic full was made of (``merge``), recorded in its manifest.
    """
    chunks = read_chunk_parts(source, info.size, window_bytes=WINDOW_BYTES, max_ops=MAX_OPS, max_read=READ_BYTES)
    return write_full_chunks(chunks, info, plan, progress=progress, direct_io=direct_io, started=started,
                             made_from=made_from)


def write_full_chunks(chunks, info: SourceFacts, plan: BackupPlan, *, progress: Progress | None = None,
                      direct_io: bool = True, started: float | None = None,
                      made_from: list[str] | None = None) -> BackupResult:
    """A RAW or QCOW2 backup of the image ``chunks`` yields: ``(chunk, parts)`` in offset order, each chunk
    with its ``index``, ``offset``, ``length``, ``extents`` and ``read_bytes``, its parts ``(offset, bytes)``
    with zeros between them.  A failure while it yields (a checksum) publishes nothing."""
    spec = plan.spec
    if plan.recipients and plan.format == "raw":
        raise UsageError("an encrypted full backup is QCOW2: in a RAW file every hole would become ciphertext")
    started = time.monotonic() if started is None else started
    final = _reserve_name(plan.dest, manifests.backup_name(spec, plan.format))
    remove_stale_temps(plan.dest)
    size = info.size
    data_bytes = read_bytes = 0
    digest = ContentDigest(size)
    sealed_to = list(plan.recipients)
    with AtomicFile(final, direct=direct_io) as out:
        blocks: Blocks = (SealedBlocks(out.fd, sealed_to, direct=out.direct) if sealed_to else
                          BlockWriter(out.fd, direct=out.direct, buffers=2, threads=2))
        try:
            writer = FULL_FORMATS[plan.format].writer(blocks, size, plan.cluster_size)
            # closing(): on any failure, wait for the reads in flight before the image is closed
            with closing(chunks):
                for chunk, reads in chunks:
                    check_cancel()
                    digest.add_parts(chunk.index, [(offset - chunk.offset, data) for offset, data in reads])
                    for offset, data in reads:       # holes merged into a read are zeros: the writer skips them
                        writer.write(offset, data)
                    read_bytes += chunk.read_bytes
                    data_bytes += sum(end - start for start, end in chunk.extents)
                    if progress:
                        progress(chunk.offset + chunk.length, size)
            writer.finish()
            blocks.flush()
            plain_size = blocks.finish() if isinstance(blocks, SealedBlocks) else None
        finally:
            blocks.close()
        file_size = os.fstat(out.fd).st_size
        manifest = Manifest(
            kind="full", format=plan.format, file=final.name, file_size=file_size, image=str(spec.image_spec),
            image_id=info.image_id, snapshot=spec.snap, snapshot_id=info.snapshot_id, size=size,
            object_size=info.object_size, checksum={"algorithm": CONTENT_ALGORITHM, "chunk_size": CHUNK,
                                                    "value": digest.hexdigest()},
            created=_now(), tool=f"virtrbd {__version__}",
            file_checksum={"algorithm": FILE_ALGORITHM,
                           "value": blocks.crc.value(file_size if plain_size is None else plain_size)},
            snapshot_time=info.snapshot_time, made_from=made_from,
            encryption=blocks.description(sealed_to) if isinstance(blocks, SealedBlocks) else None,
            cluster_size=plan.cluster_size if plan.format == "qcow2" else None,
            stats={"data_bytes": data_bytes, "read_bytes": read_bytes, "direct_io": out.direct})
        out.commit()
    return _finish(plan, manifest, final, data_bytes, started, progress)


def _finish(plan: BackupPlan, manifest: Manifest, final: Path, data_bytes: int, started: float,
            progress: Progress | None) -> BackupResult:
    """Publish the manifest (the commit point of a backup); without it the data file goes too."""
    token = exits.remove_at_forced_exit(final)
    try:
        manifest.stats["seconds"] = round(time.monotonic() - started, 3)
        manifest.domain = plan.domain
        if plan.signing_key is not None:
            manifest.sign(plan.signing_key)
        manifest_file = manifest.save(final)
        fsync_directory(plan.dest)
    except BaseException:
        try:
            final.unlink()
        except FileNotFoundError:
            pass
        raise
    finally:
        exits.forget(token)
    if progress:
        progress(manifest.size, manifest.size)
    return BackupResult(path=final, manifest=manifest_file, kind=manifest.kind, format=manifest.format,
                        image=f"{manifest.image}@{manifest.snapshot}", size=manifest.size, data_bytes=data_bytes,
                        file_size=manifest.file_size, checksum=manifest.checksum["value"],
                        seconds=time.monotonic() - started, from_snapshot=manifest.from_snapshot,
                        parent=(manifest.parent or {}).get("file"),
                        read_bytes=int(manifest.stats.get("read_bytes", 0)))


class _HashingFile(io.RawIOBase):
    """A raw file descriptor that also hashes everything written (the diff's checksum and its file CRC);
    with ``sealed``, the bytes go into that age file instead, the hashes being of the plaintext."""

    def __init__(self, fd: int, sealed: SealedBlocks | None = None):
        self.fd = fd
        self.sealed = sealed
        self.hash = FILE_HASHES[DIFF_ALGORITHM]()
        self.crc = 0
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        done = 0
        if self.sealed is not None:
            self.sealed.pwrite(self.bytes, view)
            done = len(view)
        while done < len(view):
            done += os.write(self.fd, view[done:])
        self.hash.update(view)
        self.crc = crc32c.extend(self.crc, view)
        self.bytes += len(view)
        return len(view)


def write_incremental_backup(source, info: SourceFacts, plan: BackupPlan, *, progress: Progress | None = None,
                             started: float | None = None, made_from: list[str] | None = None) -> BackupResult:
    """An rbd diff of what changed since ``plan.since`` and its manifest, on top of a backup in ``plan.dest``.

    ``source`` reads the newer snapshot and lists ``changes(offset, length, older)``.
    """
    if plan.since is None:
        raise UsageError(f"an incremental backup of {plan.spec} needs the older snapshot it starts from")
    spec, older = plan.spec, plan.since.snap
    started = time.monotonic() if started is None else started
    parents = manifests.find_backups(plan.dest, info.image_id, older)
    if not parents:
        raise BackupError(f"no backup of {plan.since} in {plan.dest}: an incremental needs the backup it "
                          f"applies to (make a full backup of @{older} first)")
    parent = parents[0]
    final = _reserve_name(plan.dest, manifests.backup_name(spec, DIFF_FORMAT, since=older))
    remove_stale_temps(plan.dest)
    size = info.size
    data_bytes = read_bytes = 0
    sealed_to = list(plan.recipients)
    with AtomicFile(final) as out, ExitStack() as cleanup:
        sealed = SealedBlocks(out.fd, sealed_to) if sealed_to else None
        if sealed is not None:
            cleanup.callback(sealed.close)          # its writer thread stops, whatever happens
        raw = _HashingFile(out.fd, sealed)
        stream = io.BufferedWriter(raw, buffer_size=1 * MiB)
        diff = DiffWriter(stream, from_snapshot=older, to_snapshot=spec.snap, size=size)
        window = ReadWindow(source.submit_read, window_bytes=WINDOW_BYTES, max_ops=MAX_OPS)
        with closing(window.run(_change_jobs(source, size, older))) as pieces:
            for piece in pieces:
                check_cancel()
                offset, length, exists = cast(tuple[int, int, bool], piece.key)
                if not exists:
                    diff.zero(offset, length)
                    continue
                data = piece.results[0]
                read_bytes += length
                # librbd reports changes by whole extents it knows of (an object that did not exist
                # before comes whole); the data in them is sent, the zero stretches only as 'z'
                # records: correct whatever the older snapshot held, and the file stays close to
                # the bytes that really changed
                cursor = 0
                for run_start, run_end in nonzero_runs(data):
                    if run_start > cursor:
                        diff.zero(offset + cursor, run_start - cursor)
                    diff.data(offset + run_start, data, run_start, run_end)
                    cursor = run_end
                if cursor < length:
                    diff.zero(offset + cursor, length - cursor)
                data_bytes += length
                if progress:
                    progress(offset + length, size)
        diff.finish()
        stream.flush()
        if sealed is not None:
            sealed.finish()
        manifest = Manifest(
            kind="incremental", format=DIFF_FORMAT, file=final.name, file_size=os.fstat(out.fd).st_size,
            image=str(spec.image_spec), image_id=info.image_id, snapshot=spec.snap,
            snapshot_id=info.snapshot_id, size=size, object_size=info.object_size,
            checksum={"algorithm": DIFF_ALGORITHM, "value": raw.hash.hexdigest()},
            created=_now(), tool=f"virtrbd {__version__}", from_snapshot=older,
            file_checksum={"algorithm": FILE_ALGORITHM, "value": f"{raw.crc:08x}"},
            snapshot_time=info.snapshot_time, made_from=made_from,
            parent={"file": parent.file, "checksum": parent.checksum["value"]},
            encryption=sealed.description(sealed_to) if sealed is not None else None,
            stats={"data_bytes": diff.data_bytes, "zero_bytes": diff.zero_bytes, "records": diff.records,
                   "read_bytes": read_bytes})
        out.commit()
    return _finish(plan, manifest, final, data_bytes, started, progress)


def _change_jobs(source: RbdSource, size: int, older: str) -> Iterator[Job]:
    """Changed extents in offset order, data ones cut into reads of at most one chunk."""
    for window_start in range(0, size, MAP_WINDOW):
        window_end = min(size, window_start + MAP_WINDOW)
        changes = sorted(source.changes(window_start, window_end - window_start, older))
        cursor = window_start
        for offset, length, exists in changes:
            end = min(offset + length, window_end)
            offset = max(offset, cursor)             # never emit a byte twice
            if end <= offset:
                continue
            cursor = end
            if not exists:
                yield Job(key=(offset, end - offset, False), ranges=())
                continue
            for piece_offset, piece_length in split_at(offset, end - offset, READ_BYTES):
                yield Job(key=(piece_offset, piece_length, True), ranges=((piece_offset, piece_length),))
