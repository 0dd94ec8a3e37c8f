"""A domain's disks backed up as one set at one instant, and restored as one.

``backup_domain`` backs up snapshot SNAP of every rbd disk of a domain, taking
the domain snapshot first when no disk has SNAP yet (``snapshot_domain``: one
instant, the guest frozen only around it).  Each manifest carries the same
``domain`` record: the domain, the consistency of SNAP, and every disk with
its backup file, so any one file of the set finds the others.  The set is all
or nothing: when a disk's backup fails, the ones this call published go again.

``restore_domain_set`` restores every disk of the set named by any one of its
files, each checked before anything is written, into its own image (or the
image's name with a suffix).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..backup import Trust, plan_backup, plan_restore, restore
from ..backup import backup as back_up
from ..backup.formats import manifest as manifests
from ..backup.results import BackupResult, RestoreResult
from ..ceph import translated
from ..errors import BackupError, UsageError, VirtrbdError
from ..layering.base import ConsistencyRecord
from ..libvirt.domain import Domain, DomainFacts
from ..libvirt.host import Host
from ..progress import Progress
from ..spec import ImageSpec, check_name
from .request import DEFAULT_FREEZE_TIMEOUT, check_request
from .snapshot import DomainSnapshot, snapshot_domain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainBackup:
    domain: str
    uuid: str
    snapshot: str
    consistency: str                            # "application", "crash" or "unknown" (not taken by virtrbd)
    backups: tuple[BackupResult, ...]           # in the order of the domain's disks
    taken: DomainSnapshot | None = None         # the snapshot this call took; None when it existed


def backup_domain(storage, name: str, snapshot: str, dest: os.PathLike | str, *, format: str | None = None,
                  since: str | None = None, quiesce: str = "auto", freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT,
                  progress: Progress | None = None, libvirt_module=None) -> DomainBackup:
    """Back up SNAP of every rbd disk of domain ``name`` into ``dest`` (``since``: an older snapshot name, each
    disk's backup of it in ``dest``), snapshotting the domain at one instant first when SNAP is new."""
    check_request(snapshot, quiesce, freeze_timeout)
    older = check_name("snapshot", since.removeprefix("@")) if since is not None else None
    with Host(storage.config.libvirt.uri, libvirt_module=libvirt_module) as host:
        facts = Domain(host, name).facts()
    plans = [plan_backup(storage, disk.image.at(snapshot), dest, format=format,
                         since=disk.image.at(older) if older else None) for disk in facts.disks]
    taken = None
    having = [disk.target for disk in facts.disks if _has_snapshot(storage, disk.image, snapshot)]
    if not having:
        taken = snapshot_domain(storage, name, snapshot, quiesce=quiesce, freeze_timeout=freeze_timeout,
                                libvirt_module=libvirt_module)
        consistency = taken.consistency
    elif len(having) < len(facts.disks):
        missing = [disk.target for disk in facts.disks if disk.target not in having]
        raise UsageError(f"domain {name}: snapshot {snapshot} is on {', '.join(having)} but not on "
                         f"{', '.join(missing)}; name a new snapshot, or one every disk has")
    else:
        consistency = _recorded(storage, facts, snapshot)
    record = {"name": facts.name, "uuid": facts.uuid, "consistency": consistency,
              "disks": [{"target": disk.target, "image": str(disk.image), "file": _file_of(plan)}
                        for disk, plan in zip(facts.disks, plans, strict=True)]}
    made: list[BackupResult] = []
    try:
        for plan in plans:
            made.append(back_up(storage, dataclasses.replace(plan, domain=record), progress=progress))
    except BaseException:
        _withdraw(made)
        raise
    return DomainBackup(facts.name, facts.uuid, snapshot, consistency, tuple(made), taken)


def _file_of(plan) -> str:
    return manifests.backup_name(plan.spec, plan.format, since=plan.since.snapshot if plan.since else None)


def _has_snapshot(storage, image: ImageSpec, snapshot: str) -> bool:
    with storage.cluster.image(image.pool, image.image, read_only=True) as opened, \
            translated(f"listing snapshots of {image}"):
        return any(snap["name"] == snapshot for snap in opened.list_snaps())


def _recorded(storage, facts: DomainFacts, snapshot: str) -> str:
    """The consistency every disk's record gives SNAP when they agree and name exactly these disks; else
    "unknown" (a snapshot taken disk by disk, by another tool, or of another set of disks)."""
    found = set()
    disks = {str(disk.image) for disk in facts.disks}
    for disk in facts.disks:
        with storage.cluster.image(disk.image.pool, disk.image.image, read_only=True) as image, \
                translated(f"reading the snapshots of {disk.image}"):
            snap_id = next(s["id"] for s in image.list_snaps() if s["name"] == snapshot)
            record = ConsistencyRecord.read(image, snapshot, snap_id)
        if record is None or record.domain_uuid != facts.uuid or set(record.disks) != disks:
            return "unknown"
        found.add(record.consistency)
    return found.pop() if len(found) == 1 else "unknown"


def _withdraw(made: list[BackupResult]) -> None:
    """A set is whole or absent: the backups this call published go again (manifest first: the commit)."""
    for result in made:
        for path in (result.manifest, result.path):
            try:
                Path(path).unlink()
            except OSError as exc:
                log.warning("%s: could not be removed after its set failed: %s", path, exc)


def restore_domain_set(storage, src: os.PathLike | str, *, suffix: str = "", force: bool = False,
                       create_snapshot: bool = False, progress: Progress | None = None) -> list[RestoreResult]:
    """Restore every disk of the domain backup set ``src`` (any one file of it, or its manifest) into its own
    image, its name followed by ``suffix``.  Every backup of the set is checked before anything is written."""
    first = manifests.resolve(src)
    if first.domain is None:
        raise UsageError(f"{first.data_path}: not one of a domain's set of backups (made by backup --domain)")
    folder = first.data_path.parent
    trust = Trust.of(storage.config.backup)
    plans, targets = [], []
    for disk in first.domain["disks"]:
        sibling = manifests.resolve(folder / disk["file"])
        if sibling.domain != first.domain:
            raise BackupError(f"{sibling.data_path}: names another domain set than {first.data_path}")
        plans.append(plan_restore(sibling.data_path, trust=trust))
        image = ImageSpec.parse(disk["image"])
        targets.append(ImageSpec(image.pool, check_name("image", image.image + suffix)))
    if len(set(targets)) != len(targets):
        raise UsageError(f"{first.data_path}: its set names one image twice")
    done: list[RestoreResult] = []
    try:
        for plan, target in zip(plans, targets, strict=True):
            done.append(restore(storage, plan, target, force=force, create_snapshot=create_snapshot,
                                progress=progress))
    except BaseException:
        _unrestore(storage, done)
        raise
    return done


def _unrestore(storage, done: list[RestoreResult]) -> None:
    """The images this call created go again; one it replaced (``force``) cannot come back and is said."""
    for result in done:
        if result.replaced:
            log.warning("%s was replaced by its backup before the set failed; it stays restored", result.image)
            continue
        try:
            storage.remove_image(result.image, with_snapshots=True)
        except VirtrbdError as exc:
            log.warning("%s: could not be removed after its set failed: %s", result.image, exc)
