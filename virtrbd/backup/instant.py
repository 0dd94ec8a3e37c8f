"""Instant restore: an image that reads a full backup file in place at once, while the data is copied into Ceph.

``start`` checks what a plain restore checks before it writes (the manifest,
the file's size and structure), lets QEMU's user read the file, writes the
marker that keeps retention off it, and asks librbd for a live import
(``ceph.live_import``): the image can be opened a few milliseconds later,
whatever its size.  ``copy`` (in the foreground, in a process of its own with
``--background``, or again with ``--resume``) copies, and meanwhile
recomputes the file's checksums against the manifest; only when they match,
and the file has not changed since ``start``, is the import committed and the
file set free.  What the copy has reached is in the image's metadata, so any
process can tell (``status``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

from ..ceph import Cluster
from ..ceph.live_import import LiveImport
from ..errors import AlreadyExistsError, BackupError, BusyError, CorruptBackupError, UsageError, VirtrbdError
from ..progress import Progress
from ..spec import ImageSpec
from . import in_use, reader_access
from .formats import check_backup_file, check_checksum
from .formats import manifest as manifests
from .formats.manifest import DIFF_FORMAT, Manifest
from .results import RestorePlan
from .verify import file_digest

RECORD_KEY = "virtrbd.instant_restore"
SOURCE_TYPES = {"raw": "raw", "qcow2": "qcow"}
#: how often the copier writes its progress into the image's metadata
REPORT_EVERY = 2.0
#: what each step checks, as the command prints it
CHECKED_BEFORE = "manifest, file size and structure"
CHECKED_DURING = "file checksum and content checksum, and that the file does not change"


@dataclass
class Record:
    """The import's state, as JSON in the image's metadata (``RECORD_KEY``)."""
    file: str
    format: str
    size: int
    marker: str
    file_stat: list[int]
    grants: list[dict] = field(default_factory=list)
    started: float = 0.0
    host: str = ""
    pid: int = 0
    client: str = ""                    # the copier's Ceph client address: its lock is broken once it died
    done: int = 0
    total: int = 0
    checked: str = "pending"            # pending | ok | failed
    error: str | None = None

    @classmethod
    def load(cls, text: str) -> Record:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class InstantStatus:
    image: str
    state: str                          # copying | stopped | executed | failed | committed
    file: str | None
    format: str | None
    done: int
    total: int
    checked: str
    copier: str | None
    error: str | None


@dataclass(frozen=True)
class InstantResult:
    image: str
    file: str
    format: str
    size: int
    seconds: float
    checked: str
    empty_objects: int


def file_stat(path: Path) -> list[int]:
    """What changes whenever the file's bytes or identity do: device, inode, size, mtime, ctime."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def check_plan(plan: RestorePlan) -> Manifest:
    """The full backup to import.  librbd reads one file, not a chain: for an incremental, a full backup of
    the same point beside it (a synthetic full, ``backups merge``) is used, or the restore is refused."""
    m = plan.newest
    if len(plan.links) == 1 and m.format != DIFF_FORMAT:
        if m.format not in SOURCE_TYPES:
            raise UsageError(f"{m.data_path}: format {m.format} cannot be restored instantly")
        return m
    fulls = [f for f in manifests.find_backups(m.data_path.parent, m.image_id, m.snapshot)
             if f.kind == "full" and f.format in SOURCE_TYPES and f.snapshot_id == m.snapshot_id]
    if not fulls:
        raise UsageError(f"{m.data_path}: an incremental backup cannot be restored instantly; make a full "
                         f"backup of its point first (virtrbd backups merge {m.data_path} --from "
                         f"{plan.links[0].data_path} --format qcow2) and restore that")
    full = min(fulls, key=lambda f: f.format != "qcow2")        # QCOW2 first: librbd copies it sparsely
    check_backup_file(full)
    return full


def start(cluster: Cluster, plan: RestorePlan, spec: ImageSpec, *, qemu_user: str) -> Record:
    """Make ``spec`` an image that reads the backup in place; nothing is left behind when this fails."""
    m = check_plan(plan)
    if cluster.exists(spec.pool, spec.image):
        raise AlreadyExistsError(f"image {spec}: already exists (an instant restore makes a new image)")
    path = Path(os.path.abspath(m.data_path))
    grants = reader_access.grant_read(path, qemu_user, shared=bool(in_use.importers(path)))
    marker = in_use.marker_path(path, spec.pool, spec.image)
    imports = LiveImport(cluster)
    try:
        in_use.write_marker(marker, str(spec))
    except FileExistsError:
        raise AlreadyExistsError(f"{marker}: an instant restore into {spec} from this file was already started") \
            from None
    record = Record(file=str(path), format=m.format, size=m.size, marker=str(marker), file_stat=file_stat(path),
                    grants=[g.to_json() for g in grants], started=time.time(), total=m.size)
    try:
        imports.prepare(spec.pool, spec.image, {"type": SOURCE_TYPES[m.format],
                                                "stream": {"type": "file", "file_path": str(path)}})
        try:
            _save(cluster, spec, record)
        except BaseException:
            imports.abort(spec.pool, spec.image)
            raise
    except BaseException:
        _release(record)
        raise
    return record


def copy(cluster: Cluster, spec: ImageSpec, *, progress: Progress | None = None) -> InstantResult:
    """Copy the rest of the backup into the image, check the file meanwhile, and commit only if it is intact."""
    started = time.monotonic()
    record = load(cluster, spec)
    imports = LiveImport(cluster)
    lock = in_use.CopyLock(Path(record.marker))
    lock.acquire(str(spec))
    try:
        if imports.status(spec.pool, spec.image) is None:      # committed by a copier killed right after
            _finish(cluster, spec, record)
            return InstantResult(str(spec), record.file, record.format, record.size, 0.0, "ok", 0)
        if record.client and record.host == socket.gethostname():     # its copier died (we hold the lock)
            imports.break_lock_of(spec.pool, spec.image, record.client)
        record.host, record.pid, record.error = socket.gethostname(), os.getpid(), None
        record.client = imports.address()       # saved before this process can take the image's lock
        _save(cluster, spec, record)
        try:
            empty = _copy_and_check(cluster, imports, spec, record, progress)
        except CorruptBackupError as exc:
            _give_up(cluster, imports, spec, record, exc)
        except VirtrbdError as exc:
            record.error = str(exc)
            _save_if_possible(cluster, spec, record)
            raise
        imports.commit(spec.pool, spec.image)
        if record.format == "raw":
            imports.sparsify(spec.pool, spec.image, _object_size(cluster, spec))
        _finish(cluster, spec, record)
    finally:
        lock.release()
    if progress:
        progress(record.size, record.size)
    return InstantResult(str(spec), record.file, record.format, record.size, time.monotonic() - started,
                         "ok", empty)


def status(cluster: Cluster, spec: ImageSpec) -> InstantStatus:
    """Where an instant restore into ``spec`` stands, from the image alone (its migration state and record)."""
    migration = LiveImport(cluster).status(spec.pool, spec.image)
    try:
        record: Record | None = load(cluster, spec)
    except BackupError:
        record = None
    if record is None:
        if migration is None:
            return InstantStatus(str(spec), "none", None, None, 0, 0, "unknown", None, None)
        return InstantStatus(str(spec), migration.state, None, None, 0, 0, "unknown", None,
                             "a live import that virtrbd did not start (no record in the image)")
    if migration is None:
        return InstantStatus(str(spec), "committed", record.file, record.format, record.size, record.size,
                             record.checked, None, "the backup file is still marked as in use: virtrbd restore "
                             f"--resume {spec} releases it")
    running = in_use.copy_running(Path(record.marker))
    state = "copying" if running else "failed" if record.error else "stopped"
    copier = f"pid {record.pid} on {record.host}" if running and record.pid else None
    return InstantStatus(str(spec), state, record.file, record.format, record.done, record.total, record.checked,
                         copier, record.error)


def abort(cluster: Cluster, spec: ImageSpec) -> Record | None:
    """Take an uncommitted instant restore back: the image is removed (not while a client has it open)."""
    imports = LiveImport(cluster)
    try:
        record = load(cluster, spec)
    except BackupError:             # killed between librbd's prepare and the record: nothing else was made
        if imports.status(spec.pool, spec.image) is None:
            raise
        imports.abort(spec.pool, spec.image)
        return None
    if in_use.copy_running(Path(record.marker)):
        raise BackupError(f"{spec}: its copy is running; stop that process first")
    imports.abort(spec.pool, spec.image)
    _release(record)
    return record


def load(cluster: Cluster, spec: ImageSpec) -> Record:
    with cluster.image(spec.pool, spec.image) as image:
        try:
            text = image.metadata_get(RECORD_KEY)
        except KeyError:
            text = None
    if text is None:
        raise BackupError(f"image {spec}: no instant restore was started into it")
    return Record.load(text)


# --- the steps ---------------------------------------------------------------------------------------------

def _save(cluster: Cluster, spec: ImageSpec, record: Record) -> None:
    with cluster.image(spec.pool, spec.image) as image:
        image.metadata_set(RECORD_KEY, json.dumps(asdict(record), sort_keys=True))


def _finish(cluster: Cluster, spec: ImageSpec, record: Record) -> None:
    """After the commit: the file is free (ACL entries, marker) and the record goes."""
    _release(record)
    with cluster.image(spec.pool, spec.image) as image:
        image.metadata_remove(RECORD_KEY)


def _copy_and_check(cluster: Cluster, imports: LiveImport, spec: ImageSpec, record: Record,
                    progress: Progress | None) -> int:
    """librbd's copy, with the file's checksums recomputed beside it; the number of holes claimed empty."""
    _check_unchanged(record, spec)
    check = _Check(record)
    check.start()
    empty = 0
    migration = imports.status(spec.pool, spec.image)
    if migration is None or migration.state != "executed":     # a copier killed after librbd's copy ended
        empty = _claim_holes(imports, spec, record)
        with _Reporter(cluster, spec, record, progress) as reporter:
            imports.execute(spec.pool, spec.image, on_progress=reporter.update)
    check.join()
    _check_unchanged(record, spec)
    if check.error is not None:
        if isinstance(check.error, VirtrbdError):
            raise CorruptBackupError(str(check.error))
        raise check.error
    record.checked = "ok"
    return empty


def _give_up(cluster: Cluster, imports: LiveImport, spec: ImageSpec, record: Record, error: BaseException) -> NoReturn:
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
    _release(record)
    raise CorruptBackupError(f"{error}; the instant restore into {spec} was taken back (the image is removed)") \
        from None


def _release(record: Record) -> None:
    """The file is no longer this import's: its marker goes, and QEMU's read entry once no import needs it."""
    in_use.remove_marker(Path(record.marker))
    if not in_use.importers(Path(record.file)):
        reader_access.revoke([reader_access.Grant.from_json(g) for g in record.grants])


def _save_if_possible(cluster: Cluster, spec: ImageSpec, record: Record) -> None:
    try:
        _save(cluster, spec, record)
    except VirtrbdError:
        pass


def _check_unchanged(record: Record, spec: ImageSpec) -> None:
    try:
        now = file_stat(Path(record.file))
    except FileNotFoundError:
        now = None
    if now != record.file_stat:
        raise CorruptBackupError(f"{record.file}: changed or replaced since the instant restore into {spec} began; "
                                 f"not committed (virtrbd restore --abort {spec} removes the image)")


def _claim_holes(imports: LiveImport, spec: ImageSpec, record: Record) -> int:
    """A RAW file's holes as empty objects, so the copy does not write them as zeros (see ``live_import``)."""
    if record.format != "raw":
        return 0
    return imports.claim_holes(spec.pool, spec.image, hole_objects(Path(record.file), _OBJECT_SIZE))


_OBJECT_SIZE = 4 << 20


def _object_size(cluster: Cluster, spec: ImageSpec) -> int:
    with cluster.image(spec.pool, spec.image, read_only=True) as image:
        return int(image.stat()["obj_size"])


def hole_objects(path: Path, object_size: int) -> list[int]:
    """The numbers of the objects that lie wholly in holes of the sparse file ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        holes: list[int] = []
        offset = 0
        while offset < size:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                data = size                     # ENXIO: nothing but a hole to the end
            first = -(-offset // object_size)
            holes.extend(range(first, min(data, size) // object_size))
            if data >= size:
                break
            offset = os.lseek(fd, data, os.SEEK_HOLE)
        return holes
    finally:
        os.close(fd)


class _Check(threading.Thread):
    """The file's checksums against its manifest, on a thread of its own while librbd copies."""

    def __init__(self, record: Record):
        super().__init__(name="instant-restore-check", daemon=True)
        self.record = record
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            m = manifests.resolve(self.record.file)
            value, _digests, _read = file_digest(m)
            check_checksum(m, value)
        except BaseException as exc:            # reported by the copier, which decides
            self.error = exc


class _Reporter:
    """librbd's progress: drawn for the terminal at once, written to the image's metadata every few seconds."""

    def __init__(self, cluster: Cluster, spec: ImageSpec, record: Record, progress: Progress | None):
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
                _save(self.cluster, self.spec, self.record)
            except Exception:                   # progress is a courtesy: the copy goes on
                pass
