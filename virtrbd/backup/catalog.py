"""What a directory on secondary storage holds: every backup with its chain, and every other file, named.

Nothing is guessed: a backup is a file with a manifest virtrbd can load; a
manifest that does not load, a data file without its manifest, a chain with a
missing or mismatched link are listed with what is wrong; an unfinished
temporary file and a file that is no backup at all are listed as such.  No
data is hashed (``verify`` does that): each entry costs a manifest read and a
``stat``, so a directory of thousands of backups lists in well under a second.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackupError, CorruptBackupError
from .files import INSTANT_MARK, TEMP_MARK
from .formats import check_file_size
from .formats import manifest as manifests
from .formats.manifest import EXTENSIONS, SUFFIX, Manifest

#: an entry's status; only the first is a backup a restore can use
OK, BROKEN, NO_MANIFEST, BROKEN_CHAIN, UNFINISHED, NOT_A_BACKUP, REMOVING = (
    "ok", "broken", "no manifest", "broken chain", "unfinished", "not a backup", "being removed")
#: what a removal renames a manifest to before it takes the data file (pruning): its intent, on the disk
REMOVAL_MARK = ".virtrbd-removing"
PROBLEMS = (BROKEN, NO_MANIFEST, BROKEN_CHAIN)


@dataclass(frozen=True)
class Entry:
    file: str                             # the backup file's name (or the other file's)
    status: str
    problem: str | None = None            # what is wrong, for every status but ok
    kind: str | None = None               # full | incremental
    format: str | None = None
    image: str | None = None              # POOL/IMAGE
    snapshot: str | None = None
    created: str | None = None
    time: str | None = None               # the point's time: when the snapshot was taken, else the backup made
    size: int | None = None               # the image's size
    on_disk: int | None = None            # bytes the data file takes on the storage
    parent: str | None = None             # an incremental's parent backup file
    chain: list[str] = field(default_factory=list)   # full first, this one last, when complete
    image_id: str | None = None           # librbd's id of the image (a recreated image differs)
    snapshot_id: int | None = None
    checksum: tuple[str, str] | None = None   # a full's content checksum: (algorithm, value)
    consistency: str | None = None        # one of a domain's set: "application", "crash" or "unknown"
    domain: str | None = None             # that domain's name


def catalog(directory: os.PathLike | str, image: str | None = None) -> list[Entry]:
    """Every entry of ``directory`` by file name; with ``image`` (POOL/IMAGE), only that image's backups."""
    root = Path(directory)
    try:
        mode = os.stat(root).st_mode
    except OSError as exc:
        raise BackupError(f"{root}: cannot read the directory ({(exc.strerror or str(exc)).lower()})") from None
    if not stat.S_ISDIR(mode):
        raise BackupError(f"{root}: not a directory")
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise BackupError(f"{root}: cannot list ({(exc.strerror or str(exc)).lower()})") from None
    present = set(names)
    loaded: dict[Path, Manifest | CorruptBackupError] = {}
    checked: dict[Path, CorruptBackupError | None] = {}
    entries = []
    for name in names:
        if name.endswith(SUFFIX):
            entries.append(_backup(root / name, _Remembered(loaded, checked)))
        elif name.startswith(".") and name.endswith(REMOVAL_MARK):
            entries.append(Entry(name, REMOVING, "a removal that was cut short (the next rm or prune ends it)"))
        elif TEMP_MARK in name:
            entries.append(Entry(name, UNFINISHED, "a backup being written, or one that was killed"))
        elif INSTANT_MARK in name:
            if name.split(INSTANT_MARK)[0] not in present:
                entries.append(Entry(name, NOT_A_BACKUP, "the marker of an instant restore whose backup file is "
                                                         "gone: remove it by hand"))
        elif name + SUFFIX in present or f".{name}{REMOVAL_MARK}" in present:
            continue                                  # listed with its manifest, or with its removal
        elif Path(name).suffix in EXTENSIONS.values():
            entries.append(Entry(name, NO_MANIFEST, "its manifest is missing (an interrupted backup?)"))
        else:
            entries.append(Entry(name, NOT_A_BACKUP))
    if image is not None:
        entries = [e for e in entries if e.image == image]
    return entries


class _Remembered:
    """Each manifest loaded and each data file checked once per listing: chains share their links."""

    def __init__(self, loaded: dict, checked: dict):
        self.loaded, self.checked = loaded, checked

    def load(self, path: Path) -> Manifest:
        if path not in self.loaded:
            try:
                self.loaded[path] = manifests.load(path)
            except CorruptBackupError as exc:
                self.loaded[path] = exc
        found = self.loaded[path]
        if isinstance(found, CorruptBackupError):
            raise found
        return found

    def check_file(self, m: Manifest) -> None:
        if m.data_path not in self.checked:
            try:
                check_file_size(m)
                self.checked[m.data_path] = None
            except CorruptBackupError as exc:
                self.checked[m.data_path] = exc
        problem = self.checked[m.data_path]
        if problem is not None:
            raise problem


def _backup(manifest_path: Path, memory: _Remembered) -> Entry:
    name = manifest_path.name[:-len(SUFFIX)]
    try:
        m = memory.load(manifest_path)
    except CorruptBackupError as exc:
        return Entry(name, BROKEN, _without_path(str(exc), manifest_path))
    problem: str | None = None
    try:
        links = manifests.chain(m, read=memory.load)
        for link in links:
            memory.check_file(link)
    except CorruptBackupError as exc:
        status, problem, files = BROKEN_CHAIN, _without_path(str(exc), manifest_path.parent), []
    else:
        status, files = OK, [link.file for link in links]
    return Entry(name, status, problem, kind=m.kind, format=m.format, image=m.image, snapshot=m.snapshot,
                 created=m.created, time=m.snapshot_time or m.created, size=m.size, on_disk=_on_disk(m),
                 parent=(m.parent or {}).get("file"), chain=files,
                 image_id=m.image_id, snapshot_id=m.snapshot_id,
                 checksum=(m.checksum["algorithm"], m.checksum["value"]) if m.kind == "full" else None,
                 consistency=m.domain["consistency"] if m.domain else None,
                 domain=m.domain["name"] if m.domain else None)


def _on_disk(m: Manifest) -> int | None:
    try:
        return os.stat(m.data_path).st_blocks * 512
    except OSError:
        return None


def _without_path(text: str, where: Path) -> str:
    """A one-line error without the directory the listing already names."""
    return text.replace(f"{where}/", "").replace(f"{where}: ", "")
