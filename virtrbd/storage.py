"""The public API an agent imports: ``Storage``, one cluster connection opened from virtrbd.conf.

::

    from virtrbd import Storage

    with Storage() as storage:                 # /etc/virtrbd/virtrbd.conf, or $VIRTRBD_CONF
        storage.create_image("rbd/vm1-disk", 10 * 2**30)
        storage.resize_image("rbd/vm1-disk", 20 * 2**30)

Image arguments are specs (``POOL/IMAGE[@SNAP]`` strings, the default pool
from the config when none is named) or ``ImageSpec`` values.  Everything
raises only ``virtrbd.errors`` classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING

from . import config as config_module
from .ceph import Cluster, translated
from .config import Config
from .errors import InvalidSpecError, UsageError
from .keyring import CephKey
from .progress import Progress
from .spec import ImageSpec

if TYPE_CHECKING:
    from .backup.instant import InstantStatus
    from .backup.instant import Record as InstantRecord
    from .backup.instant_copy import InstantResult
    from .backup.results import BackupResult, RestorePlan, RestoreResult, VerifyResult
    from .domains.backup import DomainBackup
    from .domains.snapshot import DomainSnapshot
    from .layering import CloneResult, Dependent, ImageInfo, Layering, RemoveResult, SnapshotInfo



@dataclass(frozen=True)
class ClusterInfo:
    fsid: str
    monitors: str
    user: str
    pool: str
    images: int


class Storage:
    """A connected view of the cluster for one agent, CLI call or hook run."""

    def __init__(self, config: Config | str | os.PathLike[str] | None = None, *,
                 ceph_options: Mapping[str, str] | None = None,
                 rados_module: ModuleType | None = None, rbd_module: ModuleType | None = None,
                 libvirt_module: ModuleType | None = None):
        """``ceph_options``: librados/librbd settings for this connection alone (see ``Cluster``)."""
        self.config = config if isinstance(config, Config) else config_module.load(config)
        self._libvirt_module = libvirt_module
        self.cluster = Cluster(self.config, key=self._key_from_libvirt(), options=ceph_options,
                               rados_module=rados_module, rbd_module=rbd_module)

    @cached_property
    def layering(self) -> Layering:
        """Snapshots, golden images and clones; loaded on first use (a restore or a listing never needs it)."""
        from .layering import Layering
        return Layering(self.cluster, max_clone_depth=self.config.layering.max_clone_depth)

    def _key_from_libvirt(self) -> CephKey | None:
        """Without a keyring, the key is read from the (non-private) libvirt secret."""
        if self.config.ceph.keyring is not None:
            return None
        from .libvirt.host import Host
        with Host(self.config.libvirt.uri, libvirt_module=self._libvirt_module) as host:
            return host.secret_key(self.config.libvirt.secret_uuid or "")   # config.load requires one

    # --- lifetime ------------------------------------------------------------------

    def __enter__(self) -> Storage:
        self.cluster.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.cluster.close()

    # --- specs ----------------------------------------------------------------------

    def spec(self, value: str | ImageSpec, *, snapshot: bool | None = None) -> ImageSpec:
        """Parse a spec with the config's default pool; ``snapshot`` True/False requires or forbids '@SNAP'."""
        spec = value if isinstance(value, ImageSpec) else ImageSpec.parse(value, self.config.ceph.pool)
        if snapshot is True and spec.snapshot is None:
            raise InvalidSpecError(f"{spec}: a snapshot is needed here (POOL/IMAGE@SNAP)")
        if snapshot is False and spec.snapshot is not None:
            raise InvalidSpecError(f"{spec}: name an image here, not a snapshot")
        return spec

    # --- cluster and images -------------------------------------------------------

    def check(self) -> ClusterInfo:
        """Prove the connection works: who we are, where, and how many images the default pool holds."""
        pool = self.config.ceph.pool
        return ClusterInfo(fsid=self.cluster.fsid(),
                           monitors=", ".join(str(m) for m in self.config.ceph.monitors),
                           user=self.config.ceph.entity, pool=pool, images=len(self.list_images(pool)))

    def list_images(self, pool: str | None = None) -> list[str]:
        pool = pool or self.config.ceph.pool
        return sorted(self.cluster.image_names(pool))

    def image_exists(self, image: str | ImageSpec) -> bool:
        spec = self.spec(image, snapshot=False)
        return self.cluster.exists(spec.pool, spec.image)

    def create_image(self, image: str | ImageSpec, size: int) -> ImageSpec:
        """A new format-2 image with the cluster's default features (layering, exclusive-lock, …)."""
        spec = self.spec(image, snapshot=False)
        _check_size(size)
        self.cluster.create(spec.pool, spec.image, size)
        return spec

    def resize_image(self, image: str | ImageSpec, size: int, *, allow_shrink: bool = False) -> None:
        """Grow an image; shrinking destroys data at the end, so it needs ``allow_shrink``."""
        spec = self.spec(image, snapshot=False)
        _check_size(size)
        with self.cluster.image(spec.pool, spec.image) as img, translated(f"resizing image {spec}"):
            if size < img.size() and not allow_shrink:
                raise UsageError(f"{spec}: shrinking from {img.size()} to {size} bytes discards data; "
                                 f"pass allow_shrink (--allow-shrink) to do it")
            img.resize(size)

    def remove_image(self, image: str | ImageSpec, *, with_snapshots: bool = False,
                     flatten_children: bool = False, trash: bool = False) -> RemoveResult:
        """Remove an image safely: refused, naming every cause, while clients, clones or snapshots
        depend on it — unless ``flatten_children`` / ``with_snapshots`` say how to deal with them.
        ``trash`` moves it to the RBD trash for deferred deletion instead."""
        return self.layering.remove(self.spec(image, snapshot=False), with_snapshots=with_snapshots,
                                    flatten_children=flatten_children, trash=trash)

    def image_size(self, image: str | ImageSpec) -> int:
        spec = self.spec(image)
        with self.cluster.image(spec.pool, spec.image, snapshot=spec.snapshot, read_only=True) as img, \
                translated(f"reading the size of {spec}"):
            return img.size()


    # --- snapshots -----------------------------------------------------------------------

    def create_snapshot(self, snapshot: str | ImageSpec) -> ImageSpec:
        spec = self.spec(snapshot, snapshot=True)
        self.layering.create_snapshot(spec)
        return spec

    def list_snapshots(self, image: str | ImageSpec) -> list[SnapshotInfo]:
        """Snapshots with size, protection, timestamp and the number of clones on each."""
        return self.layering.list_snapshots(self.spec(image, snapshot=False))

    def remove_snapshot(self, snapshot: str | ImageSpec, *, force: bool = False) -> None:
        """Refused while clones depend on it; a protected snapshot needs ``force``."""
        self.layering.remove_snapshot(self.spec(snapshot, snapshot=True), force=force)

    def protect_snapshot(self, snapshot: str | ImageSpec) -> bool:
        """Idempotent: False when it was protected already."""
        return self.layering.protect_snapshot(self.spec(snapshot, snapshot=True))

    def unprotect_snapshot(self, snapshot: str | ImageSpec) -> bool:
        return self.layering.unprotect_snapshot(self.spec(snapshot, snapshot=True))

    def rollback_snapshot(self, snapshot: str | ImageSpec, *, force: bool = False,
                          progress: Progress | None = None) -> None:
        """Refused while a client (a VM) has the image open, unless ``force``."""
        self.layering.rollback(self.spec(snapshot, snapshot=True), force=force, progress=progress)

    def snapshot_domain(self, domain: str, snapshot: str, *, quiesce: str = "auto",
                        freeze_timeout: float = 10.0) -> DomainSnapshot:
        """Snapshot SNAP of every rbd disk of a libvirt domain at one instant: for a running guest, its
        filesystems frozen through its agent only around that instant (``quiesce`` auto, require or off), and
        thawed by a guard process within ``freeze_timeout`` seconds whatever happens to this one."""
        from .domains.snapshot import snapshot_domain
        return snapshot_domain(self, domain, snapshot, quiesce=quiesce, freeze_timeout=freeze_timeout,
                               libvirt_module=self._libvirt_module)

    # --- golden images, clones, flatten ----------------------------------------------------

    def make_golden(self, image: str | ImageSpec) -> ImageSpec:
        """Make an image a golden base: a protected snapshot (``golden`` unless named), recorded in
        the image's metadata.  Returns POOL/IMAGE@SNAP to clone from."""
        return self.layering.make_golden(self.spec(image))

    def clone(self, parent: str | ImageSpec, child: str | ImageSpec, *, size: int | None = None,
              flatten: bool = False, exist_ok: bool = False) -> CloneResult:
        """A copy-on-write clone of POOL/IMAGE@SNAP; flattened when asked or beyond max_clone_depth.
        ``exist_ok``: a child that is already a clone of this parent is reported, not refused (reruns)."""
        if size is not None:
            _check_size(size)
        return self.layering.clone(self.spec(parent, snapshot=True), self.spec(child, snapshot=False),
                                   size=size, flatten=flatten, exist_ok=exist_ok)

    def clone_many(self, parent: str | ImageSpec, children: Sequence[str | ImageSpec], *, size: int | None = None,
                   flatten: bool = False, exist_ok: bool = False, workers: int = 8) -> list[CloneResult]:
        """Many clones of one snapshot with several in flight (a fleet from one golden image)."""
        if size is not None:
            _check_size(size)
        return self.layering.clone_many(self.spec(parent, snapshot=True),
                                        [self.spec(c, snapshot=False) for c in children],
                                        size=size, flatten=flatten, exist_ok=exist_ok, workers=workers)

    def children(self, image: str | ImageSpec) -> list[Dependent]:
        """Clones of POOL/IMAGE@SNAP, or of every snapshot of POOL/IMAGE."""
        return self.layering.children(self.spec(image))

    def flatten(self, image: str | ImageSpec, *, progress: Progress | None = None) -> bool:
        """Detach a clone from its parent by copying the parent's data; False when it had none."""
        return self.layering.flatten(self.spec(image, snapshot=False), progress=progress)

    def info(self, image: str | ImageSpec) -> ImageInfo:
        """Size, features, parent chain, snapshots and dependents of an image."""
        return self.layering.info(self.spec(image, snapshot=False))


    # --- backups to secondary storage ---------------------------------------------------------

    def backup(self, snapshot: str | ImageSpec, dest_dir: str | os.PathLike[str], *, format: str | None = None,
               since: str | ImageSpec | None = None, progress: Progress | None = None,
               recipients: Sequence[str] = ()) -> BackupResult:
        """Back up POOL/IMAGE@SNAP into ``dest_dir``: RAW (sparse) or QCOW2, or with ``since`` (an older
        snapshot) an incremental rbd diff; atomic, with a manifest.  Encrypted (age, QCOW2 or rbd diff) to
        ``recipients`` and ``[backup] recipients``.  See ``virtrbd.backup``."""
        from . import backup
        plan = backup.plan_backup(self, snapshot, dest_dir, format=format, since=since, recipients=recipients)
        return backup.backup(self, plan, progress=progress)

    def restore(self, src: str | os.PathLike[str], target: str | ImageSpec, *, force: bool = False,
                progress: Progress | None = None, identity: str | os.PathLike[str] | None = None) -> RestoreResult:
        """Restore a backup (or a chain ending in an incremental) into a new image, every byte checked
        before the image is published; through libvirt's volume upload where the daemon can.  ``identity``:
        the age identity file that opens encrypted backups."""
        from . import backup
        return backup.restore(self, src, target, force=force, progress=progress, identity=identity)

    def restore_instantly(self, src: str | os.PathLike[str] | RestorePlan, target: str | ImageSpec) -> InstantRecord:
        """Make ``target`` an image that reads the full backup ``src`` (a file, or its checked plan) in place,
        usable at once; the copy into Ceph is ``continue_instant_restore``'s (any process, any time).  See
        ``virtrbd.backup.instant``."""
        from .backup import Trust, instant, plan_restore
        from .backup.results import RestorePlan
        plan = src if isinstance(src, RestorePlan) else plan_restore(src, refuse_sealed=instant.SEALED,
                                                                     trust=Trust.of(self.config.backup))
        return instant.start(self.cluster, plan, self.spec(target, snapshot=False),
                             qemu_user=self.config.libvirt.qemu_user)

    def continue_instant_restore(self, target: str | ImageSpec, *,
                                 progress: Progress | None = None) -> InstantResult:
        """Copy the rest of an instant restore into Ceph and commit it once the backup checked out."""
        from .backup import instant_copy
        return instant_copy.copy(self.cluster, self.spec(target, snapshot=False), progress=progress)

    def instant_restore_status(self, target: str | ImageSpec) -> InstantStatus:
        from .backup import instant
        return instant.status(self.cluster, self.spec(target, snapshot=False))

    def abort_instant_restore(self, target: str | ImageSpec) -> None:
        """Remove an uncommitted instant restore's image (refused while a client has it open)."""
        from .backup import instant
        instant.abort(self.cluster, self.spec(target, snapshot=False))

    def backup_domain(self, domain: str, snapshot: str, dest_dir: str | os.PathLike[str], *,
                      format: str | None = None, since: str | None = None, quiesce: str = "auto",
                      freeze_timeout: float = 10.0, progress: Progress | None = None) -> DomainBackup:
        """Back up SNAP of every rbd disk of a libvirt domain as one set (taking the domain snapshot at one
        instant first when SNAP is new); each manifest names the domain, its consistency and the whole set."""
        from .domains.backup import backup_domain
        return backup_domain(self, domain, snapshot, dest_dir, format=format, since=since, quiesce=quiesce,
                             freeze_timeout=freeze_timeout, progress=progress, libvirt_module=self._libvirt_module)

    def restore_domain_set(self, src: str | os.PathLike[str], *, suffix: str = "", force: bool = False,
                           create_snapshot: bool = False, progress: Progress | None = None) -> list[RestoreResult]:
        """Restore every disk of a domain's set of backups (any one file of it) into its own image."""
        from .domains.backup import restore_domain_set
        return restore_domain_set(self, src, suffix=suffix, force=force, create_snapshot=create_snapshot,
                                  progress=progress)

    def verify(self, src: str | os.PathLike[str], *, against: str | ImageSpec | None = None,
               identity: str | os.PathLike[str] | None = None) -> VerifyResult:
        """Recompute a backup's checksums against its manifest; ``against`` also compares with a live snapshot.
        An encrypted backup needs ``identity``, the age identity file that opens it."""
        from . import backup
        return backup.verify(src, against=against, storage=self, identity=identity)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size <= 0:
        raise UsageError(f"invalid size {size!r}: a positive number of bytes")
