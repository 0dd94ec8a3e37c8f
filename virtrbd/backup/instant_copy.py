"""The copy behind an instant restore: librbd's copy into Ceph, the file's checksums beside it, then the commit.

Run in the foreground after ``instant.start``, in a process of its own
(``--background``), or again after a copier died (``--resume``): the state is
the image's (its migration status and the record ``instant`` keeps in its
metadata), so any process on the host can carry on.  The commit comes only
after the file's checksums matched its manifest and the file did not change
since the start; otherwise the import is taken back, or, while a guest runs on
it, left for ``--abort`` with the reason in its record.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ..ceph import Cluster
from ..ceph.live_import import Claimed, LiveImport
from ..errors import BackupError, BusyError, CorruptBackupError, VirtrbdError
from ..progress import Progress
from ..spec import ImageSpec
from . import in_use, instant
from .file_crc import FileCRC
from .formats import check_checksum, check_file_checksum
from .formats import manifest as manifests
from .formats.checksum import BackgroundDigest
from .formats.manifest import Manifest
from .formats.raw import data_extents
from .read_ahead import will_need, without_read_ahead
from .stream import CHUNK
from .verify import file_digest

#: how often the copier writes its progress into the image's metadata
REPORT_EVERY = 2.0
#: the copier's connection: librbd's copy holds this many 4 MiB objects in flight (its default, 10, took the
#: copier's peak RSS past 128 MiB, no faster; figures in docs/performance.md); no cache for a one-pass copy
COPY_CONFIG = {"rbd_cache": "false", "rbd_concurrent_management_ops": "4"}


@dataclass(frozen=True)
class InstantResult:
    image: str
    file: str
    format: str
    size: int
    seconds: float
    checked: str
    written_objects: int        # a RAW file's objects virtrbd wrote itself (librbd's copy did the rest)
    empty_objects: int          # and those it created empty (the file's holes)


def copy(cluster: Cluster, spec: ImageSpec, *, progress: Progress | None = None) -> InstantResult:
    """Copy the rest of the backup into the image, check the file meanwhile, and commit only if it is intact."""
    started = time.monotonic()
    record = instant.load(cluster, spec)
    imports = LiveImport(cluster)
    lock = in_use.CopyLock(Path(record.marker))
    lock.acquire(str(spec))
    try:
        marker, me = Path(record.marker), in_use.this_process(imports.address())
        imports.evict(spec.pool, spec.image, in_use.dead_clients(in_use.clients(marker) + record.clients))
        in_use.add_client(marker, me)
        record.clients = [*record.clients, me]
        if imports.status(spec.pool, spec.image) is None:      # committed by a copier killed right after
            instant.finish(cluster, spec, record)
            return InstantResult(str(spec), record.file, record.format, record.size, 0.0, "ok", 0, 0)
        record.host, record.pid, record.error = socket.gethostname(), os.getpid(), None
        instant.save(cluster, spec, record)
        try:
            claimed = _copy_and_check(cluster, imports, spec, record, progress)
        except CorruptBackupError as exc:
            _give_up(cluster, imports, spec, record, exc)
        except VirtrbdError as exc:
            record.error = str(exc)
            _save_if_possible(cluster, spec, record)
            raise
        imports.commit(spec.pool, spec.image)
        if record.format == "raw":
            imports.sparsify(spec.pool, spec.image, _object_size(cluster, spec))
        instant.finish(cluster, spec, record)
    finally:
        lock.release()
    if progress:
        progress(record.size, record.size)
    return InstantResult(str(spec), record.file, record.format, record.size, time.monotonic() - started,
                         "ok", claimed.written, claimed.empty)


def _copy_and_check(cluster: Cluster, imports: LiveImport, spec: ImageSpec, record: instant.Record,
                    progress: Progress | None) -> Claimed:
    """The copy (a RAW file's objects by virtrbd, the rest by librbd), with the file's checksums recomputed
    beside it: from the bytes the claims read where virtrbd writes the objects, else by reading the file
    on a thread of its own while librbd copies."""
    _check_unchanged(record, spec)
    try:
        m = manifests.resolve(record.file)
    except VirtrbdError as exc:
        raise CorruptBackupError(str(exc)) from None
    migration = imports.status(spec.pool, spec.image)
    copying = migration is None or migration.state != "executed"   # else a copier was killed after librbd's copy
    claimed = None
    with _Reporter(cluster, spec, record, progress) as reporter, _Recheck(m) as recheck:
        if copying:
            claimed = _claim_objects(cluster, imports, spec, record, reporter, recheck)
        check: _Check | _Recheck = recheck
        if claimed is None:                 # the claims read nothing: read the file beside librbd's copy
            check = _Check(m)
            check.start()
        if copying:
            imports.execute(spec.pool, spec.image, on_progress=None if claimed else reporter.update)
        error = check.result()
    _check_unchanged(record, spec)
    if error is not None:
        if isinstance(error, VirtrbdError):
            raise CorruptBackupError(str(error))
        raise error
    record.checked = "ok"
    return claimed or Claimed(0, 0)


def _give_up(cluster: Cluster, imports: LiveImport, spec: ImageSpec, record: instant.Record,
             error: BaseException) -> NoReturn:
    """A backup that failed its check is never committed: the import is taken back, or, while a client still
    has the image open, left for ``--abort`` with the reason in its record."""
    record.checked, record.error = "failed", str(error)
    try:
        imports.abort(spec.pool, spec.image)
    except BusyError:
        _save_if_possible(cluster, spec, record)
        raise CorruptBackupError(f"{error}; the instant restore into {spec} is not committed and whatever a guest "
                                 f"read from it may be wrong: stop that guest, then virtrbd restore --abort {spec}") \
            from None
    instant.release(record)
    raise CorruptBackupError(f"{error}; the instant restore into {spec} was taken back (the image is removed)") \
        from None


def _save_if_possible(cluster: Cluster, spec: ImageSpec, record: instant.Record) -> None:
    try:
        instant.save(cluster, spec, record)
    except VirtrbdError:
        pass


def _check_unchanged(record: instant.Record, spec: ImageSpec) -> None:
    try:
        now = instant.file_stat(Path(record.file))
    except FileNotFoundError:
        now = None
    if now != record.file_stat:
        raise CorruptBackupError(f"{record.file}: changed or replaced since the instant restore into {spec} began; "
                                 f"not committed (virtrbd restore --abort {spec} removes the image)")


def _claim_objects(cluster: Cluster, imports: LiveImport, spec: ImageSpec, record: instant.Record,
                   reporter: _Reporter, recheck: _Recheck) -> Claimed | None:
    """A RAW file's objects written by virtrbd, only their data, holes empty (see ``live_import``), every
    byte read also fed to ``recheck``; None where librbd's copy does it all (a QCOW2 file, which tells
    librbd where its data is; another layout)."""
    if record.format != "raw":
        return None
    object_size = _object_size(cluster, spec)

    def reported():
        for number, pieces in file_objects(Path(record.file), object_size):
            for offset, data in pieces:
                recheck.add(number * object_size + offset, data)
            yield number, pieces
            reporter.update(min((number + 1) * object_size, record.size), record.size)

    return imports.claim_objects(spec.pool, spec.image, reported())


def _object_size(cluster: Cluster, spec: ImageSpec) -> int:
    with cluster.image(spec.pool, spec.image, read_only=True) as image:
        return int(image.stat()["obj_size"])


def file_objects(path: Path, object_size: int) -> Iterator[tuple[int, list[tuple[int, bytes]]]]:
    """Every object of the sparse file ``path``: ``(number, pieces)``, its data regions as (offset in the
    object, bytes), none for an object wholly in a hole (a filesystem that cannot tell holes: all data)."""
    try:
        fd = without_read_ahead(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the backup file ({(exc.strerror or str(exc)).lower()})") from None
    try:
        size = os.fstat(fd).st_size
        regions = iter(data_extents(fd, size))
        region = next(regions, None)
        for number in range(-(-size // object_size)):
            start, end = number * object_size, min((number + 1) * object_size, size)
            pieces = []
            while region is not None and region[0] < end:
                offset, length = region
                low, high = max(offset, start), min(offset + length, end)
                goes_on = offset + length > end     # into the next object: its reading starts now
                if goes_on:
                    will_need(fd, end, min(offset + length, end + object_size) - end)
                if high > low:
                    pieces.append((low - start, _read_exactly(fd, high - low, low)))
                if goes_on:
                    break
                region = next(regions, None)
            yield number, pieces
    finally:
        os.close(fd)


def _read_exactly(fd: int, length: int, offset: int) -> bytes:
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise BackupError(f"reading the backup file at {offset}: {(exc.strerror or str(exc)).lower()}") from None
    if len(data) != length:
        raise CorruptBackupError(f"the backup file ended at {offset + len(data)} while being copied")
    return data


class _Check(threading.Thread):
    """The file's checksums against its manifest, on a thread of its own while librbd copies."""

    def __init__(self, m: Manifest):
        super().__init__(name="instant-restore-check", daemon=True)
        self.m = m
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            value, _digests, _read = file_digest(self.m)
            check_checksum(self.m, value)
        except BaseException as exc:            # reported by the copier, which decides
            self.error = exc

    def result(self) -> BaseException | None:
        self.join()
        return self.error


class _Recheck:
    """A RAW file's two checksums (its bytes' CRC, its content's digest) from the bytes the claims read.

    The file is then read once, not once for the objects and twice more for
    the checks; the digest is of exactly the bytes written into Ceph.  Data
    comes in file order, in pieces that may cross the content checksum's
    chunks (objects need not be 4 MiB): each piece is cut at their edges.
    """

    def __init__(self, m: Manifest):
        self.m = m
        self.crc = FileCRC()
        self.digest = BackgroundDigest(m.size, algorithm=m.checksum["algorithm"])
        self._chunk = 0
        self._parts: list[tuple[int, bytes | bytearray | memoryview]] = []

    def add(self, offset: int, data: bytes) -> None:
        self.crc.add(offset, data)
        view = memoryview(data)
        while view:
            index = offset // CHUNK
            if index != self._chunk:
                self._flush()
                self._chunk = index
            take = min(len(view), (index + 1) * CHUNK - offset)
            self._parts.append((offset - index * CHUNK, view[:take]))
            offset, view = offset + take, view[take:]

    def result(self) -> BaseException | None:
        try:
            self._flush()
            if self.m.file_checksum is not None:
                check_file_checksum(self.m, self.crc.value(self.m.file_size))
            check_checksum(self.m, self.digest.hexdigest())
        except BaseException as exc:
            return exc
        return None

    def __enter__(self) -> _Recheck:
        return self

    def __exit__(self, *exc_info) -> None:
        self.digest.close()

    def _flush(self) -> None:
        if self._parts:
            self.digest.add_parts(self._chunk, self._parts)
            self._parts = []


class _Reporter:
    """librbd's progress: drawn for the terminal at once, written to the image's metadata every few seconds."""

    def __init__(self, cluster: Cluster, spec: ImageSpec, record: instant.Record, progress: Progress | None):
        self.cluster, self.spec, self.record, self.progress = cluster, spec, record, progress
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="instant-restore-report", daemon=True)

    def __enter__(self) -> _Reporter:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()

    def update(self, done: int, total: int) -> int:
        if total:
            self.record.done = self.record.size * done // total
        if self.progress:
            self.progress(self.record.done, self.record.size)
        return 0

    def _run(self) -> None:
        while not self.stop.wait(REPORT_EVERY):
            try:
                instant.save(self.cluster, self.spec, self.record)
            except Exception:                   # progress is a courtesy: the copy goes on
                pass
