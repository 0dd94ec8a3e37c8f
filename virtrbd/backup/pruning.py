"""Taking backups away without breaking a chain: ``virtrbd backups rm``.

A backup is removed manifest first: the manifest is the commit point, so a
removal cut short leaves a data file without its manifest, which ``backups ls``
shows as such and a rerun of the removal takes away.  A backup that others
need (a full under incrementals, an incremental under later ones) is refused
with their names; ``force`` takes them away with it, newest first, so no chain
is ever left with a hole in its middle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackupError, NotFoundError
from .catalog import BROKEN, NOT_A_BACKUP, UNFINISHED, Entry, catalog
from .files import fsync_directory
from .formats.manifest import SUFFIX


@dataclass(frozen=True)
class Removed:
    files: list[str]            # the backups taken away, newest first


def dependents(entries: list[Entry], name: str) -> list[str]:
    """The backups built on ``name`` (its incrementals, theirs, …), the furthest from it first."""
    children: dict[str, list[str]] = {}
    for e in entries:
        if e.parent is not None:
            children.setdefault(e.parent, []).append(e.file)
    found, level = [], children.get(name, [])
    while level:
        found += level
        level = [child for parent in level for child in children.get(parent, [])]
    return found[::-1]


def remove(path: os.PathLike | str, *, force: bool = False) -> Removed:
    """Remove the backup at ``path`` (its data file or its manifest); with ``force`` also every one built on it."""
    path = Path(path)
    name = path.name[:-len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    directory = path.parent
    entries = catalog(directory)
    entry = next((e for e in entries if e.file == name), None)
    if entry is None:
        raise NotFoundError(f"{directory / name}: no such backup")
    if entry.status in (NOT_A_BACKUP, UNFINISHED, BROKEN):
        raise BackupError(f"{directory / name}: {entry.status}{f' ({entry.problem})' if entry.problem else ''}: "
                          f"not a backup virtrbd can vouch for; remove it by hand if it is yours")
    needing = dependents(entries, name)
    if needing and not force:
        raise BackupError(f"{name}: {len(needing)} backup(s) are built on it: {', '.join(needing)} (--force "
                          f"removes them too)")
    removed = []
    for file in [*needing, name]:
        _remove_one(directory, file)
        removed.append(file)
    fsync_directory(directory)
    return Removed(removed)


def _remove_one(directory: Path, name: str) -> None:
    for victim in (directory / (name + SUFFIX), directory / name):      # the commit point first
        try:
            os.unlink(victim)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BackupError(f"{victim}: cannot remove ({(exc.strerror or str(exc)).lower()})") from None
