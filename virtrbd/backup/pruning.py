"""Taking backups away without breaking a chain: ``virtrbd backups rm`` and ``backups prune``.

A removal first renames the backup's manifest to a hidden marker
(``.<file>.virtrbd-removing``): the backup stops existing at once (the
manifest is its commit point) and the intent is on the disk.  Then the data
file goes, then the marker.  A removal cut short at any moment leaves a marker
that the next ``rm`` or ``prune`` ends, and never a backup that looks whole
but is not.  Backups are removed newest link first, so a chain is never left
with a hole in its middle.

``prune`` keeps, per image and by the point's time (when the snapshot was
taken), what a policy names as Proxmox Backup Server defines its options:
keep-last, then keep-hourly, -daily, -weekly (ISO weeks), -monthly, -yearly,
each the newest backup of its last N periods that hold one, not counting
periods an earlier option already kept a backup in.  Then every backup a kept
one needs (its chain) is kept too.  Only backups whose chain is whole are
judged; anything else is left alone and said.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from ..errors import BackupError, NotFoundError
from . import in_use
from .catalog import BROKEN, NOT_A_BACKUP, OK, PROBLEMS, REMOVAL_MARK, UNFINISHED, Entry, catalog
from .files import fsync_directory
from .formats.manifest import SUFFIX
from .retention import Decision, Policy, decide


@dataclass(frozen=True)
class Removed:
    files: list[str]            # the backups taken away, newest first


@dataclass(frozen=True)
class PruneResult:
    decisions: list[Decision]   # every backup judged: kept (and why) or not
    removed: list[str]          # what went (nothing with dry_run), newest links first
    ended: list[str]            # removals a killed run had left, ended first
    dry_run: bool = False


def prune(directory: os.PathLike | str, policy: Policy, *, image: str | None = None, dry_run: bool = False,
          zone: tzinfo | None = None) -> PruneResult:
    """Remove what ``policy`` keeps neither itself nor through a chain; ``dry_run`` only says it."""
    directory = Path(directory)
    _refuse_what_is_not_sound(directory, catalog(directory, image=image))
    ended = [] if dry_run else finish_removals(directory)
    entries = catalog(directory, image=image)
    decisions = [_unless_imported(directory, d) for d in decide(entries, policy, zone)]
    links = {e.file: len(e.chain) for e in entries}
    doomed = sorted((d.file for d in decisions if not d.keep), key=lambda f: links[f], reverse=True)
    if not dry_run:
        for file in doomed:
            _remove_one(directory, file)
        if doomed:
            fsync_directory(directory)
    return PruneResult(decisions, [] if dry_run else doomed, ended, dry_run)


def _unless_imported(directory: Path, decision: Decision) -> Decision:
    """A backup an uncommitted instant restore reads stays, whatever the policy says, until the commit."""
    images = [] if decision.keep else in_use.importers(directory / decision.file)
    if not images:
        return decision
    return dataclasses.replace(decision, keep=True,
                               reason=f"read by the instant restore into {', '.join(images)} (not committed)")


def _refuse_what_is_not_sound(directory: Path, entries: list[Entry]) -> None:
    """A broken backup or chain, or two fulls of one snapshot with different content, make a policy's
    verdict a guess: nothing is removed then, and the line says why (``backups ls`` shows the details)."""
    broken = [e for e in entries if e.status in PROBLEMS]
    if broken:
        shown = "; ".join(f"{e.file}: {e.problem or e.status}" for e in broken[:2])
        raise BackupError(f"{directory}: {len(broken)} backup(s) are broken, so prune removes nothing "
                          f"({shown}{'; …' if len(broken) > 2 else ''}); see virtrbd backups ls")
    claims: dict[tuple, Entry] = {}
    for e in entries:
        if e.status != OK or e.kind != "full" or e.checksum is None:
            continue
        other = claims.setdefault((e.image_id, e.snapshot, e.snapshot_id, e.checksum[0]), e)
        if other.checksum != e.checksum:
            raise BackupError(f"{directory}: {other.file} and {e.file} both claim {e.image}@{e.snapshot} with "
                              f"different content, so prune removes nothing; remove the wrong one by hand")


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
    finish_removals(directory)
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
    for file in [*needing, name]:
        in_use.refuse_if_needed(directory / file)
    removed = []
    for file in [*needing, name]:
        _remove_one(directory, file)
        removed.append(file)
    fsync_directory(directory)
    return Removed(removed)


def finish_removals(directory: Path) -> list[str]:
    """End the removals a killed ``rm`` or ``prune`` left (their markers); the backups ended."""
    ended = []
    for marker in sorted(directory.glob(f".*{REMOVAL_MARK}")):
        name = marker.name[1:-len(REMOVAL_MARK)]
        _unlink(directory / name)
        _unlink(marker)
        ended.append(name)
    return ended


def _remove_one(directory: Path, name: str) -> None:
    marker = directory / f".{name}{REMOVAL_MARK}"
    try:
        os.rename(directory / (name + SUFFIX), marker)        # the backup is gone; the intent is kept
    except FileNotFoundError:
        pass                                                  # a data file without manifest
    except OSError as exc:
        raise BackupError(f"{directory / name}: cannot remove ({(exc.strerror or str(exc)).lower()})") from None
    _unlink(directory / name)
    _unlink(marker)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BackupError(f"{path}: cannot remove ({(exc.strerror or str(exc)).lower()})") from None
