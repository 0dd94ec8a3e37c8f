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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import config as config_module
from .ceph import Cluster, translated
from .config import Config
from .errors import InvalidSpecError, UsageError
from .keyring import CephKey
from .spec import ImageSpec


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
                 rados_module: ModuleType | None = None, rbd_module: ModuleType | None = None,
                 libvirt_module: ModuleType | None = None):
        self.config = config if isinstance(config, Config) else config_module.load(config)
        self._libvirt_module = libvirt_module
        self.cluster = Cluster(self.config, key=self._key_from_libvirt(),
                               rados_module=rados_module, rbd_module=rbd_module)

    def _key_from_libvirt(self) -> CephKey | None:
        """Without a keyring, the key is read from the (non-private) libvirt secret."""
        if self.config.ceph.keyring is not None:
            return None
        from .libvirt_host import Host
        with Host(self.config.libvirt.uri, libvirt_module=self._libvirt_module) as host:
            return host.secret_key(self.config.libvirt.secret_uuid)

    # --- lifetime ------------------------------------------------------------------

    def __enter__(self) -> "Storage":
        self.cluster.connect()
        return self

    def __exit__(self, *exc_info) -> None:
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
        return ClusterInfo(fsid=self.cluster.handle.get_fsid(),
                           monitors=", ".join(str(m) for m in self.config.ceph.monitors),
                           user=self.config.ceph.entity, pool=pool, images=len(self.list_images(pool)))

    def list_images(self, pool: str | None = None) -> list[str]:
        pool = pool or self.config.ceph.pool
        with self.cluster.ioctx(pool) as ioctx, translated(f"listing pool {pool}"):
            return sorted(self.cluster.rbd.RBD().list(ioctx))

    def image_exists(self, image: str | ImageSpec) -> bool:
        spec = self.spec(image, snapshot=False)
        with self.cluster.ioctx(spec.pool) as ioctx, translated(f"looking up {spec}"):
            try:
                self.cluster.rbd.Image(ioctx, spec.image, read_only=True).close()
                return True
            except self.cluster.rbd.ImageNotFound:
                return False

    def create_image(self, image: str | ImageSpec, size: int) -> ImageSpec:
        """A new format-2 image with the cluster's default features (layering, exclusive-lock, …)."""
        spec = self.spec(image, snapshot=False)
        _check_size(size)
        with self.cluster.ioctx(spec.pool) as ioctx, translated(f"creating image {spec}"):
            self.cluster.rbd.RBD().create(ioctx, spec.image, size, old_format=False)
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

    def remove_image(self, image: str | ImageSpec) -> None:
        spec = self.spec(image, snapshot=False)
        with self.cluster.ioctx(spec.pool) as ioctx, translated(f"removing image {spec}"):
            self.cluster.rbd.RBD().remove(ioctx, spec.image)

    def image_size(self, image: str | ImageSpec) -> int:
        spec = self.spec(image)
        with self.cluster.image(spec.pool, spec.image, snapshot=spec.snapshot, read_only=True) as img, \
                translated(f"reading the size of {spec}"):
            return img.size()


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size <= 0:
        raise UsageError(f"invalid size {size!r}: a positive number of bytes")
