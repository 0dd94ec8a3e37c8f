"""The libvirt side: the ceph secret and the rbd storage pool in a running libvirtd.

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
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

from .errors import LibvirtError, NotFoundError
from .keyring import CephKey
from .xml.pool import PoolDef
from .xml.secret import SecretDef

log = logging.getLogger(__name__)


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
def translated(libvirt: ModuleType, what: str) -> Iterator[None]:
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
        with translated(self.libvirt, f"cannot connect to libvirt at {uri}"):
            self.conn = self.libvirt.open(uri)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except self.libvirt.libvirtError as exc:
                log.debug("closing %s: %s", self.uri, exc)

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _is_missing(self, exc: Exception, code: int) -> bool:
        return isinstance(exc, self.libvirt.libvirtError) and exc.get_error_code() == code

    # --- secrets ---------------------------------------------------------------------

    def find_secret(self, secret: SecretDef):
        """The defined secret with this UUID (or, without a UUID, this usage name), or None."""
        lv = self.libvirt
        try:
            if secret.uuid:
                return self.conn.secretLookupByUUIDString(secret.uuid)
            return self.conn.secretLookupByUsage(lv.VIR_SECRET_USAGE_TYPE_CEPH, secret.usage_name)
        except lv.libvirtError as exc:
            if self._is_missing(exc, lv.VIR_ERR_NO_SECRET):
                return None
            raise LibvirtError(f"secret {secret.uuid or secret.usage_name}: {exc.get_error_message()}") from None

    def ensure_secret(self, secret: SecretDef, key: CephKey, template_dir=None):
        """Define the secret if needed and set its value; return the libvirt secret object."""
        found = self.find_secret(secret)
        what = f"secret {secret.uuid or secret.usage_name}"
        if found is None:
            with translated(self.libvirt, f"defining {what}"):
                found = self.conn.secretDefineXML(secret.to_xml(template_dir), 0)
            log.info("defined libvirt %s", what)
        with translated(self.libvirt, f"setting the value of {what}"):
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
        with translated(self.libvirt, f"undefining secret {secret.uuid or secret.usage_name}"):
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
            with translated(self.libvirt, f"defining {what}"):
                found = self.conn.storagePoolDefineXML(pool.to_xml(template_dir), 0)
            log.info("defined libvirt %s", what)
        else:
            with translated(self.libvirt, f"reading {what}"):
                existing = PoolDef.from_xml(found.XMLDesc(self.libvirt.VIR_STORAGE_XML_INACTIVE))
            if not _same_pool(existing, pool):
                raise LibvirtError(f"{what} is already defined differently (Ceph pool {existing.source_name} "
                                   f"at {', '.join(map(str, existing.monitors))}); undefine it or choose another name")
        with translated(self.libvirt, f"starting {what}"):
            if not found.isActive():
                found.create(0)
            if autostart and not found.autostart():
                found.setAutostart(1)
        return found

    def remove_pool(self, name: str) -> bool:
        found = self.find_pool(name)
        if found is None:
            return False
        with translated(self.libvirt, f"removing storage pool {name}"):
            if found.isActive():
                found.destroy()
            found.undefine()
        return True


def _same_pool(existing: PoolDef, wanted: PoolDef) -> bool:
    """Equal in what matters; libvirt adds a UUID of its own when none was given."""
    if wanted.uuid is None:
        existing = PoolDef(**{**existing.__dict__, "uuid": None})
    return existing == wanted
