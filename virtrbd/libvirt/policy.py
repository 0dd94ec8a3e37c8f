"""What a hypervisor's libvirt needs for RBD, decided from virtrbd.conf: the policy above the XML models.

The XML layer renders whatever it is given; this module decides what that is.

* The ceph secret is named ``<libvirt pool> <cephx entity>`` (``virtrbd-lab
  client.virt``).  Pools and disks reference it by UUID when ``[libvirt]
  secret_uuid`` is set, else by that usage name.  Its value comes from the
  root-only ``[ceph] keyring`` and reaches libvirt only through ``virSecretSetValue``.
* The rbd pool and every disk list all ``[ceph] monitors`` and authenticate as
  ``[ceph] client_id``; the pool carries the config's timeouts as
  ``rbd:config_opts``, so a dead monitor fails ``pool-start`` in seconds, not 30 s.
* A disk on a snapshot is read-only.
* A volume is looked up through librbd, never by a pool refresh: libvirt's rbd
  refresh opens every image of the pool (seconds for a thousand) and only
  then knows images made behind its back.

* A restore uploads through libvirt only into the libvirt pool that stands
  for ``[ceph] pool`` on a monitor of ``[ceph] monitors`` (``upload_target``):
  a pool of that name standing for another pool or cluster gets nothing.

Every ``ensure_*`` is idempotent and says what it changed (nothing, the second time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..ceph import Cluster, translated
from ..config import Config
from ..errors import AlreadyExistsError, ConfigError, LibvirtError, NotFoundError, UsageError, VirtrbdError
from ..keyring import read_key
from ..spec import ImageSpec
from ..xml.clone_markup import CloneMarkup
from ..xml.common import SecretRef
from ..xml.disk import DiskDef
from ..xml.pool import PoolDef
from ..xml.secret import SecretDef
from ..xml.volume import VolumeDef
from .host import Host, libvirt_translated

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    """What an ``ensure_*`` call did in libvirt; no actions means nothing changed."""

    what: str
    actions: tuple[str, ...] = ()
    note: str = ""          # what was done that changes nothing, e.g. the same key set again

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def __str__(self) -> str:
        text = f"{self.what}: {', '.join(self.actions) if self.actions else 'unchanged'}"
        return f"{text}; {self.note}" if self.note else text


# --- the documents, from the config --------------------------------------------------------

def secret_usage(config: Config) -> str:
    return f"{config.libvirt_pool} {config.ceph.entity}"


def secret_def(config: Config) -> SecretDef:
    return SecretDef(usage_name=secret_usage(config), uuid=config.libvirt.secret_uuid,
                     description=f"cephx key of {config.ceph.entity} for libvirt pool {config.libvirt_pool}")


def secret_ref(config: Config) -> SecretRef:
    if config.libvirt.secret_uuid:
        return SecretRef(uuid=config.libvirt.secret_uuid)
    return SecretRef(usage=secret_usage(config))


def pool_def(config: Config) -> PoolDef:
    ceph = config.ceph
    return PoolDef(name=config.libvirt_pool, source_name=ceph.pool, monitors=ceph.monitors,
                   auth_username=ceph.client_id, secret=secret_ref(config),
                   config_opts=(("client_mount_timeout", str(ceph.client_mount_timeout)),
                                ("rados_mon_op_timeout", str(ceph.rados_mon_op_timeout)),
                                ("rados_osd_op_timeout", str(ceph.rados_osd_op_timeout))))


def disk_def(config: Config, image: ImageSpec, target: str, *, read_only: bool = False, **tuning) -> DiskDef:
    """A disk on ``image`` as ``target``; ``tuning``: bus, cache, discard, io, serial, iotune.

    What virtrbd builds names its monitors (a disk does not depend on whichever
    ceph.conf the host has) and is read-only on a snapshot (which cannot be
    written); libvirt accepts disks without either, and virtrbd reads them.
    """
    if not config.ceph.monitors:
        raise ValueError("a disk needs at least one monitor ([ceph] monitors)")
    return DiskDef(image=image, target=target, monitors=config.ceph.monitors, auth_username=config.ceph.client_id,
                   secret=secret_ref(config), read_only=read_only or image.snapshot is not None, **tuning)


def volume_pool(config: Config, image: ImageSpec) -> str:
    """The libvirt pool that holds ``image``: only [ceph] pool has one (``[libvirt] pool``)."""
    if image.pool != config.ceph.pool:
        raise UsageError(f"{image}: the libvirt pool {config.libvirt_pool} holds the images of Ceph pool "
                         f"{config.ceph.pool} only")
    return config.libvirt_pool


# --- applying them through libvirt -------------------------------------------------------------

def ensure_secret(host: Host, config: Config, secret: SecretDef | None = None) -> Applied:
    """The secret is defined and holds the key of ``[ceph] keyring`` (set again each time: a rotated key lands)."""
    secret = secret or secret_def(config)
    what = f"secret {secret.uuid or secret.usage_name}"
    found = host.find_secret(secret)
    if config.ceph.keyring is None:
        if found is None:
            raise ConfigError(f"{config.path}: [ceph] keyring: needed to give the libvirt {what} its value")
        return Applied(what)
    key = read_key(config.ceph.keyring, config.ceph.entity)
    host.ensure_secret(secret, key, template_dir=config.xml.templates)
    if found is None:
        return Applied(what, ("defined", "value set"))
    return Applied(what, note="value set again from [ceph] keyring")


def ensure_pool(host: Host, config: Config, pool: PoolDef | None = None, *, autostart: bool = True) -> Applied:
    """The rbd pool is defined, started and (by default) autostarted."""
    pool = pool or pool_def(config)
    what = f"storage pool {pool.name}"
    if pool.secret is not None and host.find_secret(pool.secret) is None:
        raise LibvirtError(f"{what} authenticates with libvirt secret {pool.secret.uuid or pool.secret.usage}, "
                           f"which is not defined: define it first (virtrbd xml secret --define)")
    found = host.find_pool(pool.name)
    with libvirt_translated(host.libvirt, f"reading {what}"):
        actions = ["defined"] if found is None else []
        if found is None or not found.isActive():
            actions.append("started")
        if autostart and (found is None or not found.autostart()):
            actions.append("autostart on")
    host.ensure_pool(pool, autostart=autostart, template_dir=config.xml.templates)
    return Applied(what, tuple(actions))


def ensure_libvirt_objects(config: Config, *, autostart: bool = True, libvirt_module=None) -> list[Applied]:
    """The ceph secret and the rbd pool of ``config``, as a hypervisor agent needs them before any VM."""
    with Host(config.libvirt.uri, libvirt_module=libvirt_module) as host:
        return [ensure_secret(host, config), ensure_pool(host, config, autostart=autostart)]


def ensure_volume(host: Host, cluster: Cluster, config: Config, volume: VolumeDef) -> Applied:
    """The image exists with this capacity; a missing one is created through libvirt's pool.

    Existence is asked of librbd (the truth, ~5 ms), not of libvirt, which knows
    only what it saw at its last refresh.  An image of another size is an error:
    resizing is a decision, not a side effect of ``--define``.
    """
    pool = config.libvirt_pool
    image = ImageSpec(config.ceph.pool, volume.name)
    what = f"volume {volume.name} of storage pool {pool}"
    existing = find_volume(cluster, image)
    if existing is not None:
        if existing.capacity != volume.capacity:
            raise AlreadyExistsError(f"{what}: image {image} already exists with {existing.capacity} bytes, "
                                     f"not {volume.capacity}")
        return Applied(what)
    host.create_volume(pool, volume, template_dir=config.xml.templates)
    return Applied(what, ("created",))


def attach_disk(host: Host, config: Config, domain: str, disk: DiskDef,
                markup: CloneMarkup | None = None) -> Applied:
    """The domain's persistent definition has this disk (``attach-device --config``) and, for a
    disk that is a clone of a golden snapshot, virtrbd's markup that makes the qemu hook clone it."""
    actions = []
    if markup is not None and host.set_clone_markup(domain, [markup]):
        kind = "an ephemeral" if markup.ephemeral else "a persistent"
        actions.append(f"marked as {kind} clone of {markup.clone_of}")
    if host.attach_disk(domain, disk, template_dir=config.xml.templates):
        actions.insert(0, "attached")
    return Applied(f"domain {domain}: disk {disk.target} ({disk.image})", tuple(actions))


# --- looking volumes up ------------------------------------------------------------------------

def find_volume(cluster: Cluster, image: ImageSpec) -> VolumeDef | None:
    """The image as a volume (name, capacity), or None: one librbd open, no pool refresh."""
    try:
        with cluster.image(image.pool, image.image, read_only=True) as opened, \
                translated(f"looking up image {image}"):
            return VolumeDef(image.image, opened.size())
    except NotFoundError as exc:
        if exc.missing == "image":
            return None
        raise


def libvirt_volume(host: Host, cluster: Cluster, config: Config, name: str):
    """libvirt's handle on volume ``name`` of the config's pool, or None when the image does not exist.

    librbd decides whether it exists; libvirt's pool is refreshed only for an
    image it has not seen yet — the one case no other call can fix.
    """
    if find_volume(cluster, ImageSpec(config.ceph.pool, name)) is None:
        return None
    volume = host.find_volume(config.libvirt_pool, name)
    if volume is None:
        host.refresh_pool(config.libvirt_pool)
        volume = host.find_volume(config.libvirt_pool, name)
    return volume


# --- where a restore may upload -------------------------------------------------------------------

@dataclass
class LibvirtTarget:
    """Where a restore may upload: an open libvirt connection and the rbd pool's libvirt name."""

    host: Host
    pool: str             # the libvirt pool
    ceph_pool: str        # the Ceph pool it stands for


@contextmanager
def upload_target(config: Config) -> Iterator[LibvirtTarget | None]:
    """The libvirt side of ``config`` when libvirtd answers and runs an rbd pool on [ceph] pool; None otherwise."""
    if not config.libvirt.uri:
        yield None
        return
    try:
        host = Host(config.libvirt.uri)
    except VirtrbdError as exc:
        log.info("restore through librbd: libvirt is not reachable (%s)", exc)
        yield None
        return
    try:
        pool = host.find_pool(config.libvirt_pool)
        if pool is None or not pool.isActive():
            yield None
        elif not _holds_our_pool(host, pool, config):
            log.info("restore through librbd: libvirt's pool %s is not Ceph pool %s of monitors %s",
                     config.libvirt_pool, config.ceph.pool, ", ".join(map(str, config.ceph.monitors)))
            yield None
        else:
            yield LibvirtTarget(host, config.libvirt_pool, config.ceph.pool)
    finally:
        host.close()


def _holds_our_pool(host: Host, pool, config: Config) -> bool:
    """Whether libvirt's pool is ``config``'s Ceph pool on ``config``'s cluster (a monitor in common).

    A libvirt pool of the same name may stand for another pool, or for a pool
    of the same name in another cluster: an upload there would put the
    restored image where the user did not ask for it.
    """
    try:
        with libvirt_translated(host.libvirt, f"reading storage pool {config.libvirt_pool}"):
            found = PoolDef.from_xml(pool.XMLDesc(0))
    except VirtrbdError as exc:
        log.info("restore through librbd: %s", exc)
        return False
    ours = {address for monitor in config.ceph.monitors for address in _addresses(monitor)}
    return found.source_name == config.ceph.pool and any(
        address in ours for monitor in found.monitors for address in _addresses(monitor))


def _addresses(monitor) -> set[tuple[str, int]]:
    """(host, port) pairs a monitor written this way answers on (``Monitor.ports``), the host normalised."""
    import ipaddress
    try:
        host = str(ipaddress.ip_address(monitor.host))
    except ValueError:
        host = monitor.host.rstrip(".").casefold()
    return {(host, port) for port in monitor.ports}
