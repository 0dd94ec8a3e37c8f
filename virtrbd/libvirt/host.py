"""The libvirt side: the ceph secret, the rbd storage pool, its volumes and domains' disks.

Every call here is idempotent — "ensure", not "create" — so agents, the CLI's
``--define`` and the lab can run it again and again.  The cephx key reaches
libvirt only through ``virSecretSetValue`` (in-process, over libvirt's socket),
never on a command line.  libvirt's own errors are translated into
``virtrbd.errors.LibvirtError`` with the object's name.

The qemu hook must never use this module: libvirtd waits for the hook, and a
hook that calls back into libvirt deadlocks the daemon.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from ..errors import InvalidXMLError, LibvirtError, NotFoundError
from ..keyring import CephKey

if TYPE_CHECKING:
    from lxml import etree

    from ..xml.common import SecretRef
    from ..xml.disk import DiskDef
    from ..xml.pool import PoolDef
    from ..xml.secret import SecretDef
    from ..xml.volume import VolumeDef

log = logging.getLogger(__name__)

# The XML layer (lxml and our templates, slow to load) is imported by the methods that read or
# write XML, not here: a restore that only asks libvirtd whether it can upload never needs it.


#: where the local system daemon (libvirtd, or the modular virtqemud) listens for qemu:///system
SYSTEM_SOCKETS = (Path("/run/libvirt/libvirt-sock"), Path("/run/libvirt/virtqemud-sock"))


def nobody_listens(uri: str) -> bool:
    """True when ``uri`` is the local system daemon's and none of its sockets exists: nothing would answer.

    Loading libvirt's binding only to hear that costs a command ~12 MiB of
    memory (a restore's peak, docs/performance.md).  Any other URI (remote, a
    session daemon): False, the caller asks.
    """
    parts = urlsplit(uri)
    if parts.netloc or parts.scheme not in ("qemu", "qemu+unix") or parts.path != "/system":
        return False
    sockets = [Path(value) for key, value in parse_qsl(parts.query) if key == "socket"] or SYSTEM_SOCKETS
    return not any(path.exists() for path in sockets)


#: where the monolithic libvirtd writes its PID, and where a process's facts are (a root of its own in tests)
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")
PROC = Path("/proc")


def system_daemon_run(uri: str) -> str | None:
    """Which run of the local libvirtd answers ``uri``: "PID:START" (its start in clock ticks since boot),
    read from its PID file and /proc without libvirt's binding.  A restarted daemon is another run, and
    only a restart loads another storage backend.  None for any other URI (remote, another socket), the
    modular daemons, or a PID file that names no libvirtd."""
    parts = urlsplit(uri)
    if parts.netloc or parts.scheme not in ("qemu", "qemu+unix") or parts.path != "/system" or parts.query:
        return None
    try:
        pid = int(LIBVIRTD_PIDFILE.read_text().split()[0])
        process = PROC / str(pid)
        if (process / "comm").read_text().strip() != "libvirtd":
            return None
        start = (process / "stat").read_text().rsplit(")", 1)[1].split()[19]      # field 22, starttime
    except (OSError, ValueError, IndexError):
        return None
    return f"{pid}:{start}"


def _import_libvirt() -> ModuleType:
    try:
        import libvirt
    except ImportError:
        raise LibvirtError("the libvirt Python binding is missing: install python3-libvirt "
                           "(and use a venv made with --system-site-packages)") from None
    # libvirt prints every error to stderr unless a handler is set; ours are raised instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


@contextmanager
def libvirt_translated(libvirt: ModuleType, what: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        message = " ".join((exc.get_error_message() or str(exc)).split())
        raise LibvirtError(f"{what}: {message}") from None


class Host:
    """A connection to libvirtd, closed by ``close()`` or at the end of a ``with`` block."""

    def __init__(self, uri: str = "qemu:///system", *, libvirt_module: ModuleType | None = None):
        self.libvirt = libvirt_module or _import_libvirt()
        self.uri = uri
        with libvirt_translated(self.libvirt, f"cannot connect to libvirt at {uri}"):
            self.conn = self.libvirt.open(uri)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except self.libvirt.libvirtError as exc:
                log.debug("closing %s: %s", self.uri, exc)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _is_missing(self, exc: Exception, code: int) -> bool:
        return isinstance(exc, self.libvirt.libvirtError) and exc.get_error_code() == code

    # --- secrets ---------------------------------------------------------------------

    def find_secret(self, secret: SecretDef | SecretRef):
        """The defined secret with this UUID (or, without a UUID, this ceph usage name), or None."""
        from ..xml.secret import SecretDef

        lv = self.libvirt
        usage = secret.usage_name if isinstance(secret, SecretDef) else secret.usage
        try:
            if secret.uuid:
                return self.conn.secretLookupByUUIDString(secret.uuid)
            return self.conn.secretLookupByUsage(lv.VIR_SECRET_USAGE_TYPE_CEPH, usage)
        except lv.libvirtError as exc:
            if self._is_missing(exc, lv.VIR_ERR_NO_SECRET):
                return None
            raise LibvirtError(f"secret {secret.uuid or usage}: {exc.get_error_message()}") from None

    def ensure_secret(self, secret: SecretDef, key: CephKey, template_dir=None):
        """Define the secret if needed and set its value; return the libvirt secret object."""
        found = self.find_secret(secret)
        what = f"secret {secret.uuid or secret.usage_name}"
        if found is None:
            with libvirt_translated(self.libvirt, f"defining {what}"):
                found = self.conn.secretDefineXML(secret.to_xml(template_dir), 0)
            log.info("defined libvirt %s", what)
        with libvirt_translated(self.libvirt, f"setting the value of {what}"):
            # libvirt keeps the raw secret and base64-encodes it again for librados and QEMU
            found.setValue(base64.b64decode(key.reveal()), 0)
        return found

    def secret_key(self, uuid: str) -> CephKey:
        """The cephx key held by a (non-private) libvirt secret."""
        lv = self.libvirt
        try:
            secret = self.conn.secretLookupByUUIDString(uuid)
            value = secret.value(0)
        except lv.libvirtError as exc:
            if self._is_missing(exc, lv.VIR_ERR_NO_SECRET):
                raise NotFoundError(f"libvirt secret {uuid}: does not exist") from None
            raise LibvirtError(f"reading libvirt secret {uuid}: {exc.get_error_message()} "
                               f"(a private secret cannot be read back; set [ceph] keyring)") from None
        try:
            return CephKey(base64.b64encode(value).decode("ascii"))
        except ValueError:
            raise LibvirtError(f"libvirt secret {uuid}: its value is not a cephx key") from None

    def remove_secret(self, secret: SecretDef) -> bool:
        found = self.find_secret(secret)
        if found is None:
            return False
        with libvirt_translated(self.libvirt, f"undefining secret {secret.uuid or secret.usage_name}"):
            found.undefine()
        return True

    # --- storage pools ---------------------------------------------------------------------

    def find_pool(self, name: str):
        lv = self.libvirt
        try:
            return self.conn.storagePoolLookupByName(name)
        except lv.libvirtError as exc:
            if self._is_missing(exc, lv.VIR_ERR_NO_STORAGE_POOL):
                return None
            raise LibvirtError(f"storage pool {name}: {exc.get_error_message()}") from None

    def ensure_pool(self, pool: PoolDef, *, autostart: bool = True, template_dir=None):
        """Define, start and (optionally) autostart the rbd pool; refuse to clobber a different one."""
        found = self.find_pool(pool.name)
        what = f"storage pool {pool.name}"
        if found is None:
            with libvirt_translated(self.libvirt, f"defining {what}"):
                found = self.conn.storagePoolDefineXML(pool.to_xml(template_dir), 0)
            log.info("defined libvirt %s", what)
        else:
            from ..xml.pool import PoolDef
            with libvirt_translated(self.libvirt, f"reading {what}"):
                existing = PoolDef.from_xml(found.XMLDesc(self.libvirt.VIR_STORAGE_XML_INACTIVE))
            if not _same_pool(existing, pool):
                raise LibvirtError(f"{what} is already defined differently (Ceph pool {existing.source_name} "
                                   f"at {', '.join(map(str, existing.monitors))}); undefine it or choose another name")
        with libvirt_translated(self.libvirt, f"starting {what}"):
            if not found.isActive():
                found.create(0)
            if autostart and not found.autostart():
                found.setAutostart(1)
        return found

    def remove_pool(self, name: str) -> bool:
        found = self.find_pool(name)
        if found is None:
            return False
        with libvirt_translated(self.libvirt, f"removing storage pool {name}"):
            if found.isActive():
                found.destroy()
            found.undefine()
        return True

    def refresh_pool(self, name: str):
        """libvirt's full rescan: its rbd backend opens every image (seconds for a thousand), so rarely."""
        pool = self._defined_pool(name)
        with libvirt_translated(self.libvirt, f"refreshing storage pool {name}"):
            pool.refresh(0)
        return pool

    def _defined_pool(self, name: str):
        pool = self.find_pool(name)
        if pool is None:
            raise NotFoundError(f"storage pool {name}: not defined in libvirt")
        return pool

    # --- volumes -----------------------------------------------------------------------------

    def find_volume(self, pool_name: str, name: str):
        """libvirt's volume ``name`` as of the pool's last refresh, or None; never refreshes.

        libvirt learns of an rbd image only when it creates it or refreshes the
        whole pool.  So an image made behind its back (librbd, a clone) is None
        here until then, and one removed behind its back still answers: callers
        that need the truth ask librbd (``virtrbd.libvirt.policy.find_volume``).
        """
        lv = self.libvirt
        pool = self._defined_pool(pool_name)
        try:
            return pool.storageVolLookupByName(name)
        except lv.libvirtError as exc:
            if self._is_missing(exc, lv.VIR_ERR_NO_STORAGE_VOL):
                return None
            raise LibvirtError(f"volume {name} of storage pool {pool_name}: {exc.get_error_message()}") from None

    def create_volume(self, pool_name: str, volume: VolumeDef, template_dir=None):
        """A new raw image made by libvirt (``storageVolCreateXML``), so libvirt knows it without a refresh."""
        pool = self._defined_pool(pool_name)
        with libvirt_translated(self.libvirt, f"creating volume {volume.name} in storage pool {pool_name}"):
            created = pool.createXML(volume.to_xml(template_dir), 0)
        log.info("created volume %s in libvirt storage pool %s", volume.name, pool_name)
        return created

    # --- domains -----------------------------------------------------------------------------

    def find_domain(self, name: str):
        lv = self.libvirt
        try:
            return self.conn.lookupByName(name)
        except lv.libvirtError as exc:
            if self._is_missing(exc, lv.VIR_ERR_NO_DOMAIN):
                return None
            raise LibvirtError(f"domain {name}: {exc.get_error_message()}") from None

    def attach_disk(self, domain_name: str, disk: DiskDef, template_dir=None) -> bool:
        """Add the disk to the domain's persistent definition, as ``virsh attach-device --config``.

        False when that target already holds this image (nothing to do); an error
        when it holds anything else, rather than a second disk fighting for it.
        """
        from ..xml import safe

        domain = self.find_domain(domain_name)
        if domain is None:
            raise NotFoundError(f"domain {domain_name}: not defined in libvirt")
        what = f"domain {domain_name}"
        with libvirt_translated(self.libvirt, f"reading {what}"):
            current = safe.parse(domain.XMLDesc(self.libvirt.VIR_DOMAIN_XML_INACTIVE), what=what)
        occupant = _disk_at(current, disk.target)
        if occupant is not None:
            if _holds_image(occupant, disk):
                return False
            raise LibvirtError(f"{what}: target {disk.target} already holds {_describe(occupant)}; "
                               f"detach it or choose another target")
        with libvirt_translated(self.libvirt, f"attaching {disk.image} to {what} as {disk.target}"):
            domain.attachDeviceFlags(disk.to_xml(template_dir), self.libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        log.info("attached %s to %s as %s", disk.image, what, disk.target)
        return True


    def set_clone_markup(self, domain_name: str, markup: list) -> bool:
        """Merge virtrbd's clone markup into the domain's persistent ``<metadata>``; False when unchanged."""
        from lxml import etree

        from ..xml import clone_markup, safe

        domain = self.find_domain(domain_name)
        if domain is None:
            raise NotFoundError(f"domain {domain_name}: not defined in libvirt")
        lv = self.libvirt
        what = f"domain {domain_name}"
        try:
            text = domain.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, clone_markup.NAMESPACE,
                                   lv.VIR_DOMAIN_AFFECT_CONFIG)
            current = clone_markup.parse_clones(safe.parse(text, what=f"{what} metadata"))
        except lv.libvirtError as exc:
            if not self._is_missing(exc, lv.VIR_ERR_NO_DOMAIN_METADATA):
                raise LibvirtError(f"reading the metadata of {what}: {exc.get_error_message()}") from None
            current = []
        wanted = clone_markup.merge(current, markup)
        if wanted == current:
            return False
        element = clone_markup.render(wanted, namespaced=False)
        with libvirt_translated(lv, f"setting virtrbd's metadata on {what}"):
            domain.setMetadata(lv.VIR_DOMAIN_METADATA_ELEMENT, etree.tostring(element, encoding="unicode"),
                               clone_markup.PREFIX, clone_markup.NAMESPACE, lv.VIR_DOMAIN_AFFECT_CONFIG)
        return True


def _same_pool(existing: PoolDef, wanted: PoolDef) -> bool:
    """Equal in what matters; libvirt adds a UUID of its own when none was given."""
    from ..xml.pool import PoolDef
    if wanted.uuid is None:
        existing = PoolDef(**{**existing.__dict__, "uuid": None})
    return existing == wanted


def _disk_at(domain: etree._Element, target: str) -> etree._Element | None:
    from ..xml import nodes
    return next((node for node in domain.iterfind("devices/disk") if nodes.attr(node, "target", "dev") == target),
                None)


def _holds_image(node: etree._Element, disk: DiskDef) -> bool:
    from ..xml.disk import DiskDef, is_rbd_disk
    if not is_rbd_disk(node):
        return False
    try:
        return DiskDef.from_element(node).image == disk.image
    except InvalidXMLError:
        return False


def _describe(node: etree._Element) -> str:
    source = node.find("source")
    if source is None:
        return "an empty drive"
    name = source.get("name") or source.get("file") or source.get("dev") or source.get("volume") or "?"
    return f"{source.get('protocol') or node.get('type')} disk {name}"
