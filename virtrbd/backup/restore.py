"""Restoring a backup, or a chain of a full backup and its incrementals, into a new image.

The steps: check the chain (``plan_restore``, no cluster), make the target
(``target.RestoreTarget``), write every link's data checking every checksum on
the way, settle the image, and only then give it the target's name.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ..ceph import Cluster
from ..errors import CorruptBackupError, UsageError
from ..progress import Progress
from ..spec import ImageSpec
from .formats import check_backup_file, check_checksum, check_diff_header, full_format, open_stream, plain_size
from .formats import manifest as manifests
from .formats.checksum import FILE_HASHES, BackgroundCRC, BackgroundDigest
from .formats.manifest import Manifest
from .formats.rbddiff import DiffReader
from .granules import Granules
from .results import RestorePlan, RestoreResult
from .stream import BLOCK, CHUNK, check_cancel
from .target import RestoreTarget
from .trust import Trust

if TYPE_CHECKING:
    from ..libvirt.policy import LibvirtTarget


def plan_restore(src: os.PathLike | str, identities: list | None = None, *,
                 refuse_sealed: str | None = None, trust: Trust | None = None) -> RestorePlan:
    """Resolve ``src`` (newest backup file or its manifest) into a checked chain; reads no data but what
    the files' structure takes.  ``identities`` open encrypted links (one without them is refused here);
    ``refuse_sealed`` refuses any encrypted link, saying why; every link's signature is checked against
    ``trust`` (which may require one)."""
    links = manifests.chain(manifests.resolve(src))
    for m in links:
        if refuse_sealed is not None and m.encryption is not None:
            raise UsageError(f"{m.data_path}: encrypted: {refuse_sealed}")
        (trust or Trust()).authenticate(m)
        m.identities = identities
        check_backup_file(m)
    return RestorePlan(links)


def run_restore(cluster: Cluster, plan: RestorePlan, spec: ImageSpec, *, force: bool = False,
                create_snapshot: bool = False, progress: Progress | None = None,
                libvirt: LibvirtTarget | None = None) -> RestoreResult:
    """Restore ``plan`` into ``spec``; through libvirt's volume upload when ``libvirt`` can take it."""
    started = time.monotonic()
    target = RestoreTarget(cluster, spec, plan, force=force, libvirt=libvirt)
    with target.building() as image:
        sink = target.sink(image)
        try:
            restore_chain(plan, sink, progress=progress)
        finally:
            sink.close()
        target.settle(image)
        if create_snapshot:
            target.snapshot(image, plan.newest.snapshot)
        target.publish()
    target.clean_up()
    if progress:
        progress(plan.total_bytes, plan.total_bytes)
    return RestoreResult(image=str(spec), chain=[str(m.data_path) for m in plan.links],
                         snapshot=plan.newest.snapshot, size=plan.newest.size, written_bytes=sink.written_bytes,
                         seconds=time.monotonic() - started, replaced=target.replaces,
                         created_snapshot=plan.newest.snapshot if create_snapshot else None, path=target.path)


def restore_chain(plan: RestorePlan, sink, *, progress: Progress | None = None) -> None:
    """Write the chain's content into ``sink`` (sized for the full backup), checking every checksum."""
    done = _restore_full(plan.links[0], sink, 0, plan.total_bytes, progress)
    for m in plan.links[1:]:
        done = apply_diff(m, sink, done, plan.total_bytes, progress)
    sink.flush()


def _restore_full(m: Manifest, sink, done: int, total: int, progress: Progress | None) -> int:
    """Write a full backup's data; every chunk is checked against the manifest before the image is published.

    The content checksum is recomputed (XXH3, at memory speed, on a worker
    thread); of a backup from the SHA-256 days, the CRC-32C of its data that
    its manifest records, where it has one.
    """
    granules = Granules(BLOCK, sink.write)      # zero blocks are not written: a sparse image
    crc_wanted = m.checksum.get("data_crc32c")
    fmt = full_format(m)
    with fmt.reader(m) as reader, (BackgroundCRC() if crc_wanted else
                                      BackgroundDigest(m.size, algorithm=m.checksum["algorithm"])) as check:
        for offset, parts in fmt.chunks(reader):
            check_cancel()
            if isinstance(check, BackgroundCRC):
                check.add(offset // CHUNK, _assembled(offset, parts, min(CHUNK, m.size - offset)))
            else:
                check.add_parts(offset // CHUNK, [(at - offset, data) for at, data in parts])
            for at, data in parts:
                granules.write(at, data)
            if progress:
                progress(done + min(offset + CHUNK, m.size), total)
        granules.finish()
        value = check.hexdigest()
    if crc_wanted:
        if value != crc_wanted:
            raise CorruptBackupError(f"{m.data_path}: checksum mismatch: its data has CRC-32C {value}, "
                                     f"the manifest says {crc_wanted} (corrupt backup)")
    else:
        check_checksum(m, value)
    return done + m.size


def _assembled(offset: int, parts: list, length: int) -> bytearray:
    """A chunk's full content from its parts (zeros between): the data CRC of older backups needs it."""
    chunk = bytearray(length)
    with memoryview(chunk) as view:          # a bytearray's own slice assignment copies the data twice
        for at, data in parts:
            view[at - offset:at - offset + len(data)] = data
    return chunk


def apply_diff(m: Manifest, sink, done: int, total: int, progress: Progress | None) -> int:
    """Apply one incremental to ``sink``, every record as read, its checksum checked at the end."""
    hashed = FILE_HASHES[m.checksum["algorithm"]]()
    with open_stream(m) as f:
        reader = DiffReader(f, str(m.data_path), file_size=plain_size(m), on_bytes=hashed.update)
        check_diff_header(reader, m)
        sink.drain()
        if reader.header.size != sink.size:
            sink.resize(reader.header.size)
        for record in reader.records():
            check_cancel()
            if record.kind == "w":
                sink.write(record.offset, record.data)
            else:
                sink.zero(record.offset, record.length)
            if progress:
                progress(done + reader.position, total)
    sink.drain()
    check_checksum(m, hashed.hexdigest())
    return done + m.file_size
