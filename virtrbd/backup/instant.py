"""Instant restore: an image that reads a full backup file in place at once, while the data is copied into Ceph.

``start`` checks what a plain restore checks before it writes (the manifest,
the file's size and structure), lets QEMU's user read the file, writes the
marker that keeps retention off it, and asks librbd for a live import
(``ceph.live_import``): the image can be opened a few milliseconds later,
whatever its size.  ``copy`` (in the foreground, in a process of its own with
``--background``, or again with ``--resume``) copies, and meanwhile
recomputes the file's checksums against the manifest; only when they match,
and the file has not changed since ``start``, is the import committed and the
file set free (``instant_copy``).  What the copy has reached is in the image's
metadata, so any process can tell (``status``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..ceph import Cluster
from ..ceph.live_import import LiveImport
from ..errors import AlreadyExistsError, BackupError, NotFoundError, UsageError
from ..spec import ImageSpec
from . import in_use, reader_access
from .formats import check_backup_file
from .formats import manifest as manifests
from .formats.manifest import DIFF_FORMAT, Manifest
from .results import RestorePlan

RECORD_KEY = "virtrbd.instant_restore"
SOURCE_TYPES = {"raw": "raw", "qcow2": "qcow"}
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
    host: str = ""
    pid: int = 0
    clients: list[dict] = field(default_factory=list)    # every process that worked on it (as in the marker)
    done: int = 0                       # bytes of ``size`` copied, as librbd last reported
    checked: str = "pending"            # pending | ok | failed
    error: str | None = None

    @classmethod
    def load(cls, text: str) -> Record:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class InstantStatus:
    image: str
    state: str                          # copying | stopped | failed | committed | none (or librbd's own)
    file: str | None
    format: str | None
    done: int
    total: int
    checked: str
    copier: str | None
    error: str | None


def file_stat(path: Path) -> list[int]:
    """What changes whenever the file's bytes or identity do: device, inode, size, mtime, ctime."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


#: why an encrypted backup is not restored instantly
SEALED = ("librbd and QEMU would read the file as it is, ciphertext: restore it with "
          "'virtrbd restore FILE POOL/IMAGE --identity IDENTITY' instead")


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
    if full.encryption is not None:
        raise UsageError(f"{full.data_path}: encrypted: {SEALED}")
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
    me = in_use.this_process(imports.address())
    try:
        in_use.write_marker(marker, str(spec), client=me)
    except FileExistsError:
        raise AlreadyExistsError(f"{marker}: an instant restore into {spec} from this file was already started") \
            from None
    record = Record(file=str(path), format=m.format, size=m.size, marker=str(marker), file_stat=file_stat(path),
                    grants=[g.to_json() for g in grants], clients=[me])
    try:
        imports.prepare(spec.pool, spec.image, {"type": SOURCE_TYPES[m.format],
                                                "stream": {"type": "file", "file_path": str(path)}})
        try:
            save(cluster, spec, record)
        except BaseException:
            imports.abort(spec.pool, spec.image)
            raise
    except BaseException:
        release(record)
        raise
    return record


def status(cluster: Cluster, spec: ImageSpec) -> InstantStatus:
    """Where an instant restore into ``spec`` stands, from the image alone (its migration state and record)."""
    try:
        record: Record | None = load(cluster, spec)
    except SourceGone as exc:
        return InstantStatus(str(spec), "failed", None, None, 0, 0, "unknown", None, str(exc))
    except BackupError:
        record = None
    migration = LiveImport(cluster).status(spec.pool, spec.image)
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
    return InstantStatus(str(spec), state, record.file, record.format, record.done, record.size, record.checked,
                         copier, record.error)


def abort(cluster: Cluster, spec: ImageSpec) -> Record | None:
    """Take an uncommitted instant restore back: the image is removed (not while a client has it open)."""
    imports = LiveImport(cluster)
    try:
        record = load(cluster, spec)
    except SourceGone:              # the file is gone with whatever marker and ACL entry it had
        imports.abort(spec.pool, spec.image)
        return None
    except BackupError:             # killed between librbd's prepare and the record: nothing else was made
        if imports.status(spec.pool, spec.image) is None:
            raise
        imports.abort(spec.pool, spec.image)
        return None
    if in_use.copy_running(Path(record.marker)):
        raise BackupError(f"{spec}: its copy is running; stop that process first")
    imports.abort(spec.pool, spec.image)
    release(record)
    return record


class SourceGone(BackupError):
    """librbd cannot open an uncommitted import whose backup file is gone: only an abort helps."""


def load(cluster: Cluster, spec: ImageSpec) -> Record:
    try:
        with cluster.image(spec.pool, spec.image) as image:
            try:
                text = image.metadata_get(RECORD_KEY)
            except KeyError:
                text = None
    except NotFoundError:
        if spec.image not in cluster.image_names(spec.pool):
            raise
        raise SourceGone(f"image {spec}: cannot be opened: the backup file its instant restore reads is gone "
                         f"or unreadable; virtrbd restore --abort {spec} takes the import back") from None
    if text is None:
        raise BackupError(f"image {spec}: no instant restore was started into it")
    return Record.load(text)


# --- the record and the file, shared with the copy (instant_copy) -------------------------------------------

def save(cluster: Cluster, spec: ImageSpec, record: Record) -> None:
    with cluster.image(spec.pool, spec.image) as image:
        image.metadata_set(RECORD_KEY, json.dumps(asdict(record), sort_keys=True))


def finish(cluster: Cluster, spec: ImageSpec, record: Record) -> None:
    """After the commit: the file is free (ACL entries, marker) and the record goes."""
    release(record)
    with cluster.image(spec.pool, spec.image) as image:
        image.metadata_remove(RECORD_KEY)


def release(record: Record) -> None:
    """The file is no longer this import's: its marker goes, and QEMU's read entry once no import needs it."""
    in_use.remove_marker(Path(record.marker))
    if not in_use.importers(Path(record.file)):
        reader_access.revoke([reader_access.Grant.from_json(g) for g in record.grants])


