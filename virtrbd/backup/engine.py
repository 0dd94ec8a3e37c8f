"""The Ceph side of backups: snapshots read, images written, through ``virtrbd.ceph.Cluster`` only.

* Reading a snapshot: the allocation map comes from ``diff_iterate``
  (``whole_object=False``: exact extents; from nothing for a full backup, from
  the older snapshot for an incremental), asked 256 MiB at a time; data comes
  from ``aio_read`` with at most 24 MiB (12 reads) in flight, handed back in
  order (``stream.ReadWindow``).  Memory stays bounded whatever the image size.
* Writing an image (restore): ``aio_write`` / ``aio_write_zeroes`` with the same
  bound; writes that could overlap one still in flight wait for it first.
* A restore never writes into the image the user named: it builds a new image
  under a temporary name (``IMAGE.virtrbd-restore-XXXXXXXX``), checks every
  checksum on the way, and only then renames it (with ``force``, the old image
  steps aside first and is removed last).  A bad backup therefore leaves the
  cluster as it was; a restore killed outright leaves its temporary image,
  which a later restore into the same pool removes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .. import __version__
from ..ceph import FADVISE_NOCACHE, Cluster, errno_error, translated
from ..ceph.image import OBJECT_MAP_FEATURES
from ..errors import (
    AlreadyExistsError,
    BackupError,
    BusyError,
    CorruptBackupError,
    HasSnapshotsError,
    NotFoundError,
    UsageError,
    VirtrbdError,
)
from ..progress import Progress
from ..spec import ImageSpec, check_name
from . import manifest as manifests
from .checksum import ALGORITHM as CONTENT_ALGORITHM
from .checksum import BackgroundCRC, BackgroundDigest, ContentDigest, DataCRC
from .files import AtomicFile, BlockWriter, fsync_directory, remove_stale_temps
from .manifest import DIFF_FORMAT, Manifest
from .qcow2 import Qcow2Reader, Qcow2Writer
from .raw import RawReader, RawWriter
from .rbddiff import DiffReader, DiffWriter
from .stream import (
    BLOCK,
    CHUNK,
    Granules,
    Job,
    MiB,
    ReadWindow,
    check_cancel,
    is_zero,
    nonzero_runs,
    read_chunks,
    split_at,
    wait_until,
    within,
)
from .via_libvirt import DEFAULT_OBJECT_SIZE, LibvirtSink, LibvirtTarget, can_upload, create_volume

log = logging.getLogger(__name__)

#: progress(done, total): bytes of the image (or of the backup files) covered so far

#: reads (or writes) in flight: 24 MiB in at most 12 requests.  Each in-flight read costs about twice its
#: size (librados' receive buffer and ours); with the writer's 12 MiB a backup peaks near 100 MiB RSS
#: (measured: ~90 MiB in-process on a bluestore lab, with return_large_buffers_to_the_system).
WINDOW_BYTES = 24 * MiB
MAX_OPS = 12
MAP_WINDOW = 64 * CHUNK


def return_large_buffers_to_the_system(threshold: int = CHUNK + 2048) -> bool:
    """Make glibc unmap freed buffers larger than one of our 4 MiB chunks, for processes that read a lot.

    Reading a snapshot, librados receives each 4 MiB read into a page-aligned
    buffer (4 MiB plus alignment slack) allocated in its messenger threads;
    glibc's default keeps freed ones in heaps that fragment, and the backup's
    peak RSS then depends on thread timing (measured 86 to 154 MiB for one
    snapshot).  Above this threshold those buffers are mapped and unmapped:
    the peak stays near 100 MiB.  Python's own 4 MiB ``bytes`` (4 MiB + 33)
    stay below it and are recycled from the heap, which halves the page faults
    a lower threshold would cost (1 MiB measured: +1.8 CPU-s of faults per
    2 GiB).  A restore does not need it (its big buffers come and go in one
    thread: ~90 MiB without it).  Process-wide, so the command calls it; a
    program using the library may too.  False where the C library is not glibc.
    """
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


# --- results ------------------------------------------------------------------------------------------

@dataclass
class BackupResult:
    path: Path
    manifest: Path
    kind: str                   # "full" | "incremental"
    format: str                 # "raw" | "qcow2" | "rbd-diff-v1"
    image: str                  # POOL/IMAGE@SNAP
    size: int                   # the image's size in bytes
    data_bytes: int             # bytes read from the cluster (allocated or changed extents)
    file_size: int
    checksum: str
    seconds: float
    from_snapshot: str | None = None
    parent: str | None = None

    @property
    def rate(self) -> float:
        """Image bytes covered per second."""
        return self.size / self.seconds if self.seconds else 0.0


@dataclass
class RestoreResult:
    image: str                  # POOL/IMAGE
    chain: list[str]            # backup files applied, full backup first
    snapshot: str               # the snapshot whose content the image now holds
    size: int
    written_bytes: int
    seconds: float
    replaced: bool = False
    created_snapshot: str | None = None
    path: str = "librbd"        # how the data went in: "libvirt" (volume upload) or "librbd"


@dataclass
class VerifyResult:
    file: Path
    kind: str
    format: str
    image: str
    checksum: str
    checked_bytes: int
    seconds: float
    against: str | None = None


@dataclass(frozen=True)
class BackupPlan:
    """A checked backup request: nothing here needs the cluster."""

    spec: ImageSpec             # POOL/IMAGE@SNAP
    dest: Path
    format: str                 # "raw" | "qcow2" | "rbd-diff-v1"
    since: ImageSpec | None = None
    cluster_size: int = 64 << 10


@dataclass
class RestorePlan:
    """A checked chain of backups: manifests linked, files present, sizes and structure valid."""

    links: list[Manifest] = field(default_factory=list)

    @property
    def newest(self) -> Manifest:
        return self.links[-1]

    @property
    def total_bytes(self) -> int:
        return self.links[0].size + sum(m.file_size for m in self.links[1:])

    @property
    def data_bytes(self) -> int | None:
        """The bytes of data the chain writes, at most (its manifests' stats); None when one does not say."""
        sizes = [m.stats.get("data_bytes") for m in self.links]
        return sum(sizes) if all(isinstance(n, int) for n in sizes) else None


# --- the cluster as a source and a sink ---------------------------------------------------------------

class RbdSource:
    """An open RBD image (snapshot) as a ``stream.Source``; reads carry the ``NOCACHE`` hint (read once)."""

    def __init__(self, image, what: str):
        self.image = image
        self.what = what
        with translated(f"reading the size of {what}"):
            self.size = image.size()

    def changes(self, offset: int, length: int, from_snapshot: str | None) -> list[tuple[int, int, bool]]:
        """``(offset, length, exists)`` of what differs from ``from_snapshot`` (None: what is allocated)."""
        found: list[tuple[int, int, bool]] = []

        def collect(off: int, n: int, exists: bool) -> int:
            found.append((off, n, bool(exists)))
            return 0

        with translated(f"reading the allocation map of {self.what}"):
            self.image.diff_iterate(offset, length, from_snapshot, collect, include_parent=True,
                                    whole_object=False)
        return found

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [(o, n) for o, n, exists in self.changes(offset, length, None) if exists]

    def submit_read(self, offset: int, length: int, done) -> None:
        what = f"reading {self.what} at {offset}"

        def complete(completion, data) -> None:
            ret = completion.get_return_value()
            if ret < 0:
                done(None, errno_error(ret, what))
            else:
                done(data, None)

        with translated(what):
            self.image.aio_read(offset, length, complete, FADVISE_NOCACHE)


class RbdSink:
    """An open, writable RBD image as a ``stream.Sink``: bounded asynchronous writes.

    Writes carry the ``NOCACHE`` hint, as ``rbd import``'s do: a restored image
    is written once, and keeping it in the OSDs' caches only evicts what the
    running guests read (and costs the OSDs time: 8 % of a restore's in the lab).
    The data of a write is kept alive until librbd completes it: an image
    opened with zero-copy writes (``RESTORE_CONFIG``) sends the caller's
    buffer itself, and the Python binding does not hold it.
    """

    def __init__(self, image, what: str, *, window_bytes: int = WINDOW_BYTES, max_ops: int = MAX_OPS):
        self.image = image
        self.what = what
        self.window_bytes = window_bytes
        self.max_ops = max_ops
        with translated(f"reading the size of {what}"):
            self.size = image.size()
        self.written_bytes = 0
        self._cond = threading.Condition()
        self._bytes = 0
        self._ops = 0
        self._error: BaseException | None = None
        self._high = 0               # end of the furthest write since the last drain

    def resize(self, size: int) -> None:
        self.drain()
        _resize(self.image, self.what, size)
        self.size = size

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = within(self.size, offset, start, len(data) if end is None else end)
        length = end - start
        if length <= 0:
            return
        if isinstance(data, bytes) and start == 0 and end == len(data):
            payload = data
        else:
            payload = bytes(memoryview(data)[start:end])
        self._reserve(offset, length, length)
        self._submit(lambda cb: self.image.aio_write(payload, offset, cb, FADVISE_NOCACHE), length,
                     f"writing {self.what} at {offset}", payload)
        self.written_bytes += length

    def zero(self, offset: int, length: int) -> None:
        length = min(length, self.size - offset)
        if length <= 0:
            return
        self._reserve(offset, length, 0)
        self._submit(lambda cb: self.image.aio_write_zeroes(offset, length, cb), 0,
                     f"zeroing {self.what} at {offset}")

    def _reserve(self, offset: int, length: int, nbytes: int) -> None:
        with self._cond:
            if offset < self._high:                 # might overlap a write in flight: let it land first
                wait_until(self._cond, lambda: self._ops <= 0)
                self._high = 0
            wait_until(self._cond, lambda: self._error is not None or (
                self._ops < self.max_ops and (self._bytes + nbytes <= self.window_bytes or self._ops == 0)))
            self._raise_error()
            self._bytes += nbytes
            self._ops += 1
            self._high = max(self._high, offset + length)

    def _submit(self, start_io: Callable, nbytes: int, what: str, buffer: bytes | None = None) -> None:
        """Start one write; ``buffer`` (the data a zero-copy write sends) is held until it completes."""
        def complete(completion) -> None:
            nonlocal buffer
            buffer = None
            ret = completion.get_return_value()
            with self._cond:
                if ret < 0 and self._error is None:
                    self._error = errno_error(ret, what)
                self._bytes -= nbytes
                self._ops -= 1
                self._cond.notify_all()
        try:
            with translated(what):
                start_io(complete)
        except BaseException:       # refused by librbd, so no callback will come (see ReadWindow._start)
            with self._cond:
                self._bytes -= nbytes
                self._ops -= 1
            raise

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Wait for every write in flight; raise the first that failed."""
        with self._cond:
            wait_until(self._cond, lambda: self._ops <= 0)
            self._high = 0
            self._raise_error()

    def flush(self) -> None:
        self.drain()
        with translated(f"flushing {self.what}"):
            self.image.flush()

    def close(self, timeout: float = 120.0) -> None:
        """Wait (bounded) for writes in flight without raising: used on the way out of a failure."""
        with self._cond:
            self._cond.wait_for(lambda: self._ops <= 0, timeout=timeout)


# --- backup -------------------------------------------------------------------------------------------

@dataclass
class ImageInfo:
    """What a manifest records about the image a backup comes from."""

    size: int
    image_id: str
    snapshot_id: int
    object_size: int = 4 * MiB
    snapshots: dict[str, int] = field(default_factory=dict)


def _image_info(image, spec: ImageSpec) -> ImageInfo:
    with translated(f"reading {spec}"):
        snapshots = {s["name"]: s["id"] for s in image.list_snaps()}
        return ImageInfo(size=image.size(), image_id=image.id(), snapshot_id=snapshots.get(spec.snapshot, 0),
                         object_size=int(image.stat()["obj_size"]), snapshots=snapshots)


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
        info = _image_info(image, spec)
        source = RbdSource(image, str(spec))
        if plan.since is None:
            return write_full_backup(source, info, plan, progress=progress, direct_io=direct_io, started=started)
        older = plan.since.snapshot
        if older not in info.snapshots:
            raise NotFoundError(f"snapshot {plan.since}: does not exist")
        if info.snapshots[older] >= info.snapshot_id:
            raise UsageError(f"--since {plan.since} is not older than {spec}")
        return write_incremental_backup(source, info, plan, progress=progress, started=started)


def write_full_backup(source, info: ImageInfo, plan: BackupPlan, *, progress: Progress | None = None,
                      direct_io: bool = True, started: float | None = None) -> BackupResult:
    """A RAW or QCOW2 backup of ``source`` (a ``stream.Source``) and its manifest, published atomically."""
    spec = plan.spec
    started = time.monotonic() if started is None else started
    final = _reserve_name(plan.dest, manifests.backup_name(spec, plan.format))
    remove_stale_temps(plan.dest)
    size = info.size
    data_bytes = 0
    digest = ContentDigest(size)
    crc = DataCRC()
    with AtomicFile(final, direct=direct_io) as out:
        blocks = BlockWriter(out.fd, direct=out.direct, buffers=3, threads=2)
        try:
            if plan.format == "qcow2":
                writer = Qcow2Writer(blocks, size, plan.cluster_size)
            else:
                writer = RawWriter(blocks, size)
            # closing(): on any failure, wait for the reads in flight before the image is closed
            with closing(read_chunks(source, size, window_bytes=WINDOW_BYTES, max_ops=MAX_OPS)) as chunks:
                for chunk in chunks:
                    check_cancel()
                    digest.add(chunk.index, chunk.data)
                    crc.add(chunk.index, chunk.data)
                    for start, end in chunk.extents:
                        writer.write(start, chunk.data, start - chunk.offset, end - chunk.offset)
                        data_bytes += end - start
                    if progress:
                        progress(chunk.offset + chunk.length, size)
            writer.finish()
            blocks.flush()
        finally:
            blocks.close()
        file_size = os.fstat(out.fd).st_size
        manifest = Manifest(
            kind="full", format=plan.format, file=final.name, file_size=file_size, image=str(spec.image_spec),
            image_id=info.image_id, snapshot=spec.snapshot, snapshot_id=info.snapshot_id, size=size,
            object_size=info.object_size, checksum={"algorithm": CONTENT_ALGORITHM, "chunk_size": CHUNK,
                                                    "value": digest.hexdigest(), "data_crc32c": crc.hexdigest()},
            created=_now(), tool=f"virtrbd {__version__}",
            cluster_size=plan.cluster_size if plan.format == "qcow2" else None,
            stats={"data_bytes": data_bytes, "direct_io": out.direct})
        out.commit()
    return _finish(plan, manifest, final, data_bytes, started, progress)


def _finish(plan: BackupPlan, manifest: Manifest, final: Path, data_bytes: int, started: float,
            progress: Progress | None) -> BackupResult:
    """Publish the manifest (the commit point of a backup); without it the data file goes too."""
    try:
        manifest.stats["seconds"] = round(time.monotonic() - started, 3)
        manifest_file = manifest.save(final)
        fsync_directory(plan.dest)
    except BaseException:
        try:
            final.unlink()
        except FileNotFoundError:
            pass
        raise
    if progress:
        progress(manifest.size, manifest.size)
    return BackupResult(path=final, manifest=manifest_file, kind=manifest.kind, format=manifest.format,
                        image=f"{manifest.image}@{manifest.snapshot}", size=manifest.size, data_bytes=data_bytes,
                        file_size=manifest.file_size, checksum=manifest.checksum["value"],
                        seconds=time.monotonic() - started, from_snapshot=manifest.from_snapshot,
                        parent=(manifest.parent or {}).get("file"))


class _HashingFile(io.RawIOBase):
    """A raw file descriptor that also feeds SHA-256 with everything written."""

    def __init__(self, fd: int):
        self.fd = fd
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        self.sha256.update(view)
        self.bytes += len(view)
        return len(view)


def write_incremental_backup(source, info: ImageInfo, plan: BackupPlan, *, progress: Progress | None = None,
                             started: float | None = None) -> BackupResult:
    """An rbd diff of what changed since ``plan.since`` and its manifest, on top of a backup in ``plan.dest``.

    ``source`` reads the newer snapshot and lists ``changes(offset, length, older)``.
    """
    spec, older = plan.spec, plan.since.snapshot
    started = time.monotonic() if started is None else started
    parents = manifests.find_backups(plan.dest, info.image_id, older)
    if not parents:
        raise BackupError(f"no backup of {plan.since} in {plan.dest}: an incremental needs the backup it "
                          f"applies to (make a full backup of @{older} first)")
    parent = parents[0]
    final = _reserve_name(plan.dest, manifests.backup_name(spec, DIFF_FORMAT, since=older))
    remove_stale_temps(plan.dest)
    size = info.size
    data_bytes = 0
    with AtomicFile(final) as out:
        raw = _HashingFile(out.fd)
        stream = io.BufferedWriter(raw, buffer_size=1 * MiB)
        diff = DiffWriter(stream, from_snapshot=older, to_snapshot=spec.snapshot, size=size)
        window = ReadWindow(source.submit_read, window_bytes=WINDOW_BYTES, max_ops=MAX_OPS)
        with closing(window.run(_change_jobs(source, size, older))) as pieces:
            for piece in pieces:
                check_cancel()
                offset, length, exists = piece.key
                if not exists:
                    diff.zero(offset, length)
                    continue
                data = piece.results[0]
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
        manifest = Manifest(
            kind="incremental", format=DIFF_FORMAT, file=final.name, file_size=raw.bytes,
            image=str(spec.image_spec), image_id=info.image_id, snapshot=spec.snapshot,
            snapshot_id=info.snapshot_id, size=size, object_size=info.object_size,
            checksum={"algorithm": manifests.DIFF_ALGORITHM, "value": raw.sha256.hexdigest()},
            created=_now(), tool=f"virtrbd {__version__}", from_snapshot=older,
            parent={"file": parent.file, "checksum": parent.checksum["value"]},
            stats={"data_bytes": diff.data_bytes, "zero_bytes": diff.zero_bytes, "records": diff.records})
        out.commit()
    return _finish(plan, manifest, final, data_bytes, started, progress)


def _change_jobs(source, size: int, older: str):
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
            for piece_offset, piece_length in split_at(offset, end - offset, CHUNK):
                yield Job(key=(piece_offset, piece_length, True), ranges=((piece_offset, piece_length),))


# --- restore ------------------------------------------------------------------------------------------

def check_backup_file(m: Manifest) -> None:
    """The file exists, has the recorded size, and its structure holds (no data hashed)."""
    path = m.data_path
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise CorruptBackupError(f"{path}: the backup file is missing (its manifest is there)") from None
    if actual != m.file_size:
        kind = "truncated" if actual < m.file_size else "longer than recorded"
        raise CorruptBackupError(f"{path}: {kind}: {actual} bytes, the manifest says {m.file_size}")
    if m.format == "qcow2":
        with Qcow2Reader(path, expected_size=m.size) as reader:
            if reader.cluster_size != m.cluster_size:
                raise CorruptBackupError(f"{path}: cluster size {reader.cluster_size}, the manifest says "
                                         f"{m.cluster_size}")
            reader.validate()
    elif m.format == DIFF_FORMAT:
        with open(path, "rb", buffering=256 << 10) as f:
            reader = DiffReader(f, str(path), file_size=m.file_size)
            _check_diff_header(reader, m)
            for _ in reader.records(with_data=False):
                pass


def _check_diff_header(reader: DiffReader, m: Manifest) -> None:
    h = reader.header
    if (h.from_snapshot, h.to_snapshot, h.size) != (m.from_snapshot, m.snapshot, m.size):
        raise CorruptBackupError(
            f"{m.data_path}: the diff goes from @{h.from_snapshot} to @{h.to_snapshot} ({h.size} bytes), its "
            f"manifest says @{m.from_snapshot} to @{m.snapshot} ({m.size} bytes)")


def plan_restore(src: os.PathLike | str) -> RestorePlan:
    """Resolve ``src`` (newest backup file or its manifest) into a checked chain; reads no data."""
    links = manifests.chain(manifests.resolve(src))
    for m in links:
        check_backup_file(m)
    return RestorePlan(links)


def _check_replaceable(cluster: Cluster, spec: ImageSpec) -> None:
    """--force replaces an image only if removing it would work: no snapshots, nobody has it open."""
    with cluster.image(spec.pool, spec.image, read_only=True) as image, translated(f"inspecting {spec}"):
        if list(image.list_snaps()):
            raise HasSnapshotsError(f"image {spec}: has snapshots; remove them before replacing it")
        if list(image.watchers_list()):
            raise BusyError(f"image {spec}: is in use (open by a client); it cannot be replaced")


TEMP_IMAGE_MARK = ".virtrbd-restore-"
REPLACED_IMAGE_MARK = ".virtrbd-replaced-"
_TEMP_TOKEN_HEX = 8


def _temp_image_name(name: str, mark: str = TEMP_IMAGE_MARK) -> str:
    """``NAME.virtrbd-restore-XXXXXXXX``: the image a restore into ``name`` writes (a long name is cut to fit)."""
    token = os.urandom(_TEMP_TOKEN_HEX // 2).hex()
    return check_name("image", name[:255 - len(mark) - _TEMP_TOKEN_HEX] + mark + token)


def _is_temp_image(candidate: str) -> bool:
    """``candidate`` is a name _temp_image_name makes: a target, TEMP_IMAGE_MARK, 8 lowercase hex digits."""
    target, mark, token = candidate.rpartition(TEMP_IMAGE_MARK)
    return bool(target and mark) and manifests.is_lower_hex(token, _TEMP_TOKEN_HEX)


#: seconds a temporary image must stay without a watcher to count as a killed restore's: a running
#: restore leaves its image unwatched only for milliseconds, between creating it and opening it (and,
#: when the restore settings go into the image as metadata, between the two opens that takes)
STALE_GRACE = 3.0


def remove_stale_temp_images(cluster: Cluster, pool: str, *, names: list[str] | None = None,
                             grace: float = STALE_GRACE) -> list[str]:
    """Remove the temporary images that killed restores left in ``pool``; their names.

    A restore removes its temporary image on every path it lives through;
    SIGKILL or a power cut leaves it.  Any later restore into the pool removes
    such images once nobody has them open, checked twice ``grace`` apart: a
    restore running now holds its image open from just after creating it until
    it has renamed it (but for milliseconds, see STALE_GRACE); a killed one
    keeps its watch until the OSDs expire it (30 s by default), so its image
    waits for a later run.  Best effort: an image that cannot be inspected or
    removed is logged and left, and the restore goes on.  ``names``: the
    pool's images, when the caller has just listed them.
    """
    candidates = [n for n in (names if names is not None else cluster.image_names(pool)) if _is_temp_image(n)]
    candidates = [name for name in candidates if _unwatched(cluster, pool, name)]
    if not candidates:
        return []
    time.sleep(grace)
    removed = []
    for name in candidates:
        if not _unwatched(cluster, pool, name):
            continue
        try:
            _remove_image(cluster, pool, name)
        except (NotFoundError, BusyError):
            continue                  # another restore removed it first, or a client opened it meanwhile
        except VirtrbdError as exc:
            log.warning("could not remove %s/%s, left by a restore that was killed: %s", pool, name, exc)
            continue
        log.info("removed %s/%s, left by a restore that was killed", pool, name)
        removed.append(name)
    return removed


def _in_use(cluster: Cluster, pool: str, name: str) -> bool:
    """Whether a client has the image open (a watch on it)."""
    with cluster.image(pool, name, read_only=True) as image, translated(f"inspecting {pool}/{name}"):
        return bool(list(image.watchers_list()))


def _unwatched(cluster: Cluster, pool: str, name: str) -> bool:
    """Whether the image exists and no client has it open (False when that cannot be told)."""
    try:
        return not _in_use(cluster, pool, name)
    except NotFoundError:
        return False
    except VirtrbdError as exc:
        log.warning("could not inspect %s/%s, which looks left by a restore that was killed: %s", pool, name, exc)
        return False


def _remove_image(cluster: Cluster, pool: str, name: str) -> None:
    """Remove an image we created, its snapshots first."""
    with cluster.image(pool, name) as image, translated(f"removing snapshots of {pool}/{name}"):
        for snap in list(image.list_snaps()):
            image.remove_snap(snap["name"])
    cluster.remove(pool, name)


def _refresh_libvirt_pool(libvirt: LibvirtTarget) -> None:
    """Have libvirt list the restored image by its name: it made the volume under the temporary name,
    and learns of the rename only by rescanning the pool (seconds for a pool of thousands of images)."""
    try:
        libvirt.host.refresh_pool(libvirt.pool)
    except VirtrbdError as exc:
        log.warning("libvirt's pool %s still lists the restored image under its temporary name (%s): "
                    "refresh the pool", libvirt.pool, exc)


def _rename(cluster: Cluster, pool: str, name: str, new_name: str) -> None:
    cluster.rename(pool, name, new_name)


def _step_aside(cluster: Cluster, target: ImageSpec) -> str:
    """Rename the image a restore replaces out of the way; its new name.

    The old image is removed only once the restored one has its name, so one
    of them holds the data at every moment, also for a restore killed then
    (its old image stays as ``IMAGE.virtrbd-replaced-XXXXXXXX``, which nothing
    removes on its own).  A client that opened it since ``_check_replaceable``
    looked makes the restore fail, as it did then.
    """
    aside = _temp_image_name(target.image, REPLACED_IMAGE_MARK)
    _rename(cluster, target.pool, target.image, aside)
    try:
        in_use = _in_use(cluster, target.pool, aside)
    except BaseException as exc:
        _step_back(cluster, target, aside, exc)
        raise
    if in_use:
        _step_back(cluster, target, aside, None)
        raise BusyError(f"image {target}: is in use (open by a client); it cannot be replaced")
    return aside


def _step_back(cluster: Cluster, target: ImageSpec, aside: str, cause: BaseException | None) -> None:
    """Give the old image its name back after a replacement failed; say where it is if that fails too."""
    try:
        _rename(cluster, target.pool, aside, target.image)
    except VirtrbdError as exc:
        why = f"{cause}; " if isinstance(cause, VirtrbdError) else ""
        raise BackupError(f"image {target} could not be replaced ({why}putting it back failed: {exc}); "
                          f"it is now {target.pool}/{aside}: rename it back by hand") from None


def _remove_replaced(cluster: Cluster, pool: str, aside: str) -> None:
    """Remove the image a restore replaced; a failure leaves it, named, and the restore stands."""
    try:
        _remove_image(cluster, pool, aside)
    except VirtrbdError as exc:
        log.warning("the replaced image is now %s/%s and could not be removed (%s): remove it by hand",
                    pool, aside, exc)


def run_restore(cluster: Cluster, plan: RestorePlan, target: ImageSpec, *, force: bool = False,
                create_snapshot: bool = False, progress: Progress | None = None,
                libvirt: LibvirtTarget | None = None) -> RestoreResult:
    """Restore ``plan`` into ``target``; through libvirt's volume upload when ``libvirt`` can take it."""
    started = time.monotonic()
    base = plan.links[0]
    names = cluster.image_names(target.pool)
    exists = target.image in names
    if exists and not force:
        raise AlreadyExistsError(f"image {target}: already exists (--force replaces it)")
    if exists:
        _check_replaceable(cluster, target)
    remove_stale_temp_images(cluster, target.pool, names=names)
    temp = _temp_image_name(target.image)
    what = f"{target.pool}/{temp}"
    order = base.object_size.bit_length() - 1 if base.object_size & (base.object_size - 1) == 0 else None
    created = renamed = False
    aside = None
    try:
        uploading = (libvirt is not None and target.pool == libvirt.ceph_pool
                     and base.object_size == DEFAULT_OBJECT_SIZE and can_upload(libvirt))
        if uploading:
            created = True                       # from here on, a failure removes it
            create_volume(libvirt, temp, base.size)
        else:
            cluster.create(target.pool, temp, base.size, order=order)
            created = True
        config_by_metadata = not uploading and not _client_has_restore_config(cluster)
        if config_by_metadata:
            _configure_for_restore(cluster, target.pool, temp)
        with cluster.image(target.pool, temp) as image:
            held_back = 0
            if uploading:
                sink = LibvirtSink(libvirt, temp, base.size, resize=lambda size: _resize(image, what, size))
            else:
                held_back = _hold_back_object_map(cluster, image, plan, what)
                sink = RbdSink(image, what)
            try:
                restore_chain(plan, sink, progress=progress)
            finally:
                sink.close()
            if held_back:
                _restore_object_map(image, held_back, what)
            if config_by_metadata:
                _forget_restore_config(image, what)
            if create_snapshot:
                with translated(f"creating snapshot {what}@{plan.newest.snapshot}"):
                    image.create_snap(plan.newest.snapshot)
            # renamed while still open: an image under a temporary name that nobody has open is what
            # remove_stale_temp_images takes for a killed restore's
            aside = _step_aside(cluster, target) if exists else None
            try:
                _rename(cluster, target.pool, temp, target.image)
            except BaseException as exc:
                if aside:
                    _step_back(cluster, target, aside, exc)
                raise
            renamed = True
    except BaseException:
        if created and not renamed:
            try:
                _remove_image(cluster, target.pool, temp)
            except VirtrbdError as exc:
                log.warning("could not remove the partial image %s/%s: %s", target.pool, temp, exc)
        raise
    if aside:
        _remove_replaced(cluster, target.pool, aside)
    if uploading:
        _refresh_libvirt_pool(libvirt)
    if progress:
        progress(plan.total_bytes, plan.total_bytes)
    return RestoreResult(image=str(target), chain=[str(m.data_path) for m in plan.links],
                         snapshot=plan.newest.snapshot, size=plan.newest.size, written_bytes=sink.written_bytes,
                         seconds=time.monotonic() - started, replaced=exists,
                         created_snapshot=plan.newest.snapshot if create_snapshot else None,
                         path="libvirt" if uploading else "librbd")


#: librbd settings for the image a restore writes, while it writes:
#:
#: * cache off, zero-copy writes on: its data is written once, in 4 MiB pieces, and never read back;
#:   librbd's cache would only copy every byte and then hold the copies, and with zero-copy writes
#:   librbd sends our buffer itself (``RbdSink`` keeps it alive until the write completes).  Measured
#:   on the bluestore lab (2 GiB of data): 0.2 CPU-s less in the client and a peak RSS of 107 MiB
#:   instead of 123 MiB; the OSD gets the CPU time back.
#: * 32 concurrent management operations instead of 10: the object map's rebuild
#:   (``_restore_object_map``) reads every object's state this many at a time; 36 ms instead of
#:   54 ms for a 4 GiB image, and proportionally more for larger ones.
#:
#: A client that only restores (the ``restore`` command) has them for its whole connection
#: (``Storage(ceph_options=RESTORE_CONFIG)``).  Any other gets them as per-image overrides (image
#: metadata, as ``rbd config image set`` stores them) for the temporary image alone: ~40 ms more,
#: for storing them, a second open and removing them.
RESTORE_CONFIG = {"rbd_cache": "false", "rbd_disable_zero_copy_writes": "false",
                  "rbd_concurrent_management_ops": "32"}


def _client_has_restore_config(cluster: Cluster) -> bool:
    """Whether the connection itself has ``RESTORE_CONFIG``, so the image needs no overrides.

    (A pool-level override, ``rbd config pool set``, still wins over it, as
    it does for every image of that pool.)
    """
    return all(cluster.setting(key) == value for key, value in RESTORE_CONFIG.items())


def _configure_for_restore(cluster: Cluster, pool: str, name: str) -> None:
    """Store ``RESTORE_CONFIG`` in the new image; librbd applies it when the image is next opened."""
    what = f"{pool}/{name}"
    with cluster.image(pool, name) as image, translated(f"setting the restore's config of {what}"):
        for key, value in RESTORE_CONFIG.items():
            image.metadata_set(f"conf_{key}", value)


def _forget_restore_config(image, what: str) -> None:
    """Remove the restore's overrides, so the restored image behaves as its pool's other images do."""
    with translated(f"removing the restore's config of {what}"):
        for key in RESTORE_CONFIG:
            image.metadata_remove(f"conf_{key}")


#: librbd updates a new image's object map (and fast-diff, which rests on it) before the first write
#: to each of its objects: one more write that the OSD commits, per object.  A restore that fills a
#: good part of the image writes faster with the map switched off and rebuilt once at the end, which
#: costs a read of every object's state instead.  Measured on the bluestore lab: the updates cost
#: ~0.4 ms per object written, the rebuild ~0.05 ms per object of the image (4 GiB half written:
#: 3.46 s instead of 3.68 s, rebuild included).  So the map is held back when the backup holds data
#: for at least this share of the image's objects; below it the updates are cheaper.  Switching the
#: features off and on costs ~10 ms more, what the updates of a few dozen objects cost: a restore
#: with less data than HOLD_BACK_OBJECT_MAP_MIN objects' worth keeps the map on whatever the share.
HOLD_BACK_OBJECT_MAP_SHARE = 1 / 8
HOLD_BACK_OBJECT_MAP_MIN = 64


def _hold_back_object_map(cluster: Cluster, image, plan: RestorePlan, what: str) -> int:
    """Switch the new image's object map off for the restore when rebuilding it is cheaper.

    Returns the features ``_restore_object_map`` must see on again (0: the
    map was left alone).  Only a speed-up: where librbd refuses, the restore
    writes with the map on; an error that may have come after the change
    (a timeout) is settled at the end, when the features are compared.
    """
    features = image.features() & OBJECT_MAP_FEATURES
    data = plan.data_bytes
    enough = max(HOLD_BACK_OBJECT_MAP_SHARE * plan.newest.size, HOLD_BACK_OBJECT_MAP_MIN * plan.newest.object_size)
    if not features or data is None or data < enough:
        return 0
    try:
        with translated(f"switching the object map of {what} off while it is written"):
            image.update_features(features, False)
    except VirtrbdError as exc:
        log.info("%s; the restore keeps it up to date instead", exc)
    return features


def _restore_object_map(image, features: int, what: str) -> None:
    """Switch back on those of ``features`` that are off and build the map from the objects written.

    Called before any snapshot: a snapshot's object map is a copy of the image's.
    """
    with translated(f"rebuilding the object map of {what}"):
        off = features & ~image.features()
        if off:
            image.update_features(off, True)
            image.rebuild_object_map()


def _resize(image, what: str, size: int) -> None:
    with translated(f"resizing {what} to {size} bytes"):
        image.resize(size, allow_shrink=True)


def restore_chain(plan: RestorePlan, sink, *, progress: Progress | None = None) -> None:
    """Write the chain's content into ``sink`` (sized for the full backup), checking every checksum."""
    done = _restore_full(plan.links[0], sink, 0, plan.total_bytes, progress)
    for m in plan.links[1:]:
        done = _apply_diff(m, sink, done, plan.total_bytes, progress)
    sink.flush()


def _full_chunks(m: Manifest, reader):
    """(offset, data, extents) of a full backup's chunks that hold data."""
    if m.format == "raw":
        yield from reader.chunks()
    else:
        for offset, data in reader.chunks():
            yield offset, data, [(offset, offset + len(data))]


def _open_full(m: Manifest):
    if m.format == "raw":
        return RawReader(m.data_path, expected_size=m.size)
    return Qcow2Reader(m.data_path, expected_size=m.size)


def _restore_full(m: Manifest, sink, done: int, total: int, progress: Progress | None) -> int:
    """Write a full backup's data; every chunk is checked against the manifest before the image is published.

    The manifest's CRC-32C of the data is what is checked when it has one (at
    CRC speed); older manifests get their SHA-256 recomputed.
    """
    granules = Granules(BLOCK, sink.write)      # zero blocks are not written: a sparse image
    crc_wanted = m.checksum.get("data_crc32c")
    with _open_full(m) as reader, (BackgroundCRC() if crc_wanted else BackgroundDigest(m.size)) as check:
        for offset, data, extents in _full_chunks(m, reader):
            check_cancel()
            check.add(offset // CHUNK, data)
            for start, end in extents:
                granules.write(start, data, start - offset, end - offset)
            if progress:
                progress(done + offset + len(data), total)
        granules.finish()
        value = check.hexdigest()
    if crc_wanted:
        if value != crc_wanted:
            raise CorruptBackupError(f"{m.data_path}: checksum mismatch: its data has CRC-32C {value}, "
                                     f"the manifest says {crc_wanted} (corrupt backup)")
    else:
        _check_checksum(m, value)
    return done + m.size


def _check_checksum(m: Manifest, value: str) -> None:
    if value != m.checksum["value"]:
        raise CorruptBackupError(f"{m.data_path}: checksum mismatch: the content hashes to {value[:16]}…, "
                                 f"the manifest says {m.checksum['value'][:16]}… (corrupt backup)")


def _apply_diff(m: Manifest, sink, done: int, total: int, progress: Progress | None) -> int:
    sha = hashlib.sha256()
    with open(m.data_path, "rb", buffering=1 * MiB) as f:
        reader = DiffReader(f, str(m.data_path), file_size=m.file_size, on_bytes=sha.update)
        _check_diff_header(reader, m)
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
    _check_checksum(m, sha.hexdigest())
    return done + m.file_size


# --- verify -------------------------------------------------------------------------------------------

def file_digest(m: Manifest, *, keep: bool = False,
                progress: Progress | None = None) -> tuple[str, BackgroundDigest | None, int]:
    """Recompute a backup file's checksum: (value, per-chunk digests of a full backup, bytes read)."""
    check_backup_file(m)
    if m.format == DIFF_FORMAT:
        sha = hashlib.sha256()
        with open(m.data_path, "rb", buffering=1 * MiB) as f:
            reader = DiffReader(f, str(m.data_path), file_size=m.file_size, on_bytes=sha.update)
            for _ in reader.records():
                if progress:
                    progress(reader.position, m.file_size)
        return sha.hexdigest(), None, m.file_size
    read = 0
    with _open_full(m) as reader, BackgroundDigest(m.size, keep=keep) as digest:
        for offset, data, _extents in _full_chunks(m, reader):
            digest.add(offset // CHUNK, data)
            read += len(data)
            if progress:
                progress(offset + len(data), m.size)
        value = digest.hexdigest()
    return value, digest, read


def run_verify(m: Manifest, *, cluster: Cluster | None = None, against: ImageSpec | None = None,
               progress: Progress | None = None) -> VerifyResult:
    started = time.monotonic()
    value, digests, read = file_digest(m, keep=against is not None, progress=progress)
    _check_checksum(m, value)
    if against is not None:
        assert cluster is not None
        with cluster.image(against.pool, against.image, snapshot=against.snapshot, read_only=True) as image:
            source = RbdSource(image, str(against))
            if m.format == DIFF_FORMAT:
                read += _compare_diff(m, source)
            else:
                read += _compare_full(m, digests, source)
    return VerifyResult(file=m.data_path, kind=m.kind, format=m.format, image=f"{m.image}@{m.snapshot}",
                        checksum=value, checked_bytes=read, seconds=time.monotonic() - started,
                        against=str(against) if against else None)


def _compare_full(m: Manifest, digests: BackgroundDigest, source: RbdSource) -> int:
    if source.size != m.size:
        raise BackupError(f"{m.data_path} holds {m.size} bytes, {source.what} has {source.size}")
    live = ContentDigest(source.size, keep=True)
    read = 0
    with closing(read_chunks(source, source.size, window_bytes=WINDOW_BYTES, max_ops=MAX_OPS)) as chunks:
        for chunk in chunks:
            live.add(chunk.index, chunk.data)
            read += chunk.length
    live.hexdigest()
    for index, (ours, theirs) in enumerate(zip(digests.digests, live.digests, strict=False)):
        if ours != theirs:
            raise BackupError(f"{m.data_path} differs from {source.what} in the 4 MiB chunk at offset "
                              f"{index * CHUNK}")
    return read


def _compare_diff(m: Manifest, source: RbdSource) -> int:
    """Every changed extent the diff records holds what the snapshot holds there."""
    read = 0
    with open(m.data_path, "rb", buffering=1 * MiB) as f:
        reader = DiffReader(f, str(m.data_path), file_size=m.file_size)
        if reader.header.size != source.size:
            raise BackupError(f"{m.data_path} ends at {reader.header.size} bytes, {source.what} has {source.size}")
        for record in reader.records():
            for offset, length in split_at(record.offset, record.length, CHUNK):
                with translated(f"reading {source.what} at {offset}"):
                    live = source.image.read(offset, length)
                expected = record.data[offset - record.offset:offset - record.offset + length] \
                    if record.kind == "w" else None
                if (expected is None and not is_zero(live)) or (expected is not None and live != expected):
                    raise BackupError(f"{m.data_path} differs from {source.what} at offset {offset}")
                read += length
    return read
