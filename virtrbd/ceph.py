"""The one place that talks to Ceph: connections, pools and images through librados/librbd.

Three rules are kept here so the rest of virtrbd need not think about them:

* Timeouts come from virtrbd.conf and are set with ``conf_set`` before
  connecting (``Rados.connect(timeout=)`` is ignored by Pacific, and without
  them a wrong key blocks for 300 s).
* The cephx key is handed to librados in-process (``conf_set('key', …)``),
  never through argv, the environment or a file librados would read.
* Every handle lives in a ``with`` block and is closed on every path; every
  librados/librbd exception leaves this module as a ``virtrbd.errors`` class
  whose message names the object and the cause.

The ``rados`` and ``rbd`` modules are injectable so unit tests pass fakes built
from the real bindings (``create_autospec``) instead of patching globals.
"""

from __future__ import annotations

import errno as errno_codes
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType

from . import errors
from .config import Config
from .keyring import CephKey, read_key
from .monitor import Monitor, mon_host
from .probe import listening

log = logging.getLogger(__name__)
#: ``LIBRADOS_OP_FLAG_FADVISE_NOCACHE`` (librados.h; part of its ABI): data read or written once, by a
#: backup or a restore, should not push what the running guests use out of the OSDs' caches.
#: Spelled here so that modules above this one need not import the bindings.
FADVISE_NOCACHE = 0x40

#: what each errno means to a user, in the words a message uses after the object's name
_CAUSES = {
    errno_codes.ENOENT: "does not exist",
    errno_codes.EEXIST: "already exists",
    errno_codes.EBUSY: "is in use (open by a client or locked)",
    errno_codes.ENOTEMPTY: "has snapshots",
    errno_codes.EPERM: "permission denied",
    errno_codes.EACCES: "permission denied",
    errno_codes.ETIMEDOUT: "timed out",
    errno_codes.ENOSPC: "no space left in the cluster",
    errno_codes.EDQUOT: "pool quota exceeded",
    errno_codes.EROFS: "is read-only",
    errno_codes.EINVAL: "invalid argument",
    errno_codes.ENOTCONN: "not connected to the cluster",
    errno_codes.ESHUTDOWN: "connection to the cluster shut down",
    errno_codes.EOPNOTSUPP: "operation not supported (by the cluster or the image's features)",
    errno_codes.ENOSYS: "operation not supported by this Ceph release",
}


def is_ceph_error(exc: BaseException) -> bool:
    """True for exceptions raised by the rados or rbd bindings (real or fake)."""
    return type(exc).__module__ in ("rados", "rbd") or getattr(exc, "_virtrbd_fake_ceph", False)


def translate(exc: BaseException, what: str, *, timeout: float | None = None) -> errors.VirtrbdError:
    """A ``virtrbd.errors`` instance saying what happened to ``what``."""
    code = abs(getattr(exc, "errno", None) or 0)
    cls = errors.ERRNO_CLASSES.get(code, errors.CephError)
    cause = _CAUSES.get(code)
    if cause is None:
        cause = f"{os.strerror(code).lower()} ({_plain(exc)})" if code else _plain(exc)
    if code == errno_codes.ETIMEDOUT and timeout:
        cause = f"timed out after {timeout:g} s"
    return cls(f"{what}: {cause}", errno=code or None)


def _plain(exc: BaseException) -> str:
    """The binding's message without its '[errno N] ' prefix."""
    text = str(exc)
    if text.startswith("[errno"):
        text = text.partition("]")[2].strip()
    return text or type(exc).__name__


@contextmanager
def translated(what: str, *, timeout: float | None = None) -> Iterator[None]:
    """Run a block of binding calls; Ceph errors come out as ``virtrbd.errors``."""
    try:
        yield
    except errors.VirtrbdError:
        raise
    except Exception as exc:
        if not is_ceph_error(exc):
            raise
        log.debug("%s: %r", what, exc)
        raise translate(exc, what, timeout=timeout) from None


def _import_bindings() -> tuple[ModuleType, ModuleType]:
    try:
        import rados
        import rbd
    except ImportError:
        raise errors.CephError(
            "the Ceph Python bindings are missing: install python3-rados and python3-rbd "
            "(and use a venv made with --system-site-packages)") from None
    return rados, rbd


class Cluster:
    """A connection to the Ceph cluster named by virtrbd.conf.

    Use it as a context manager::

        with Cluster(config) as cluster, cluster.image("rbd", "vm1") as image:
            image.size()

    ``key`` overrides the keyring named in the config (the public API passes
    the value of the libvirt secret this way when only ``secret_uuid`` is set).
    ``options`` are librados/librbd settings for this client alone, set before
    it connects (a command that only restores turns librbd's cache off this way).
    """

    def __init__(self, config: Config, *, key: CephKey | None = None, options: Mapping[str, str] | None = None,
                 rados_module: ModuleType | None = None, rbd_module: ModuleType | None = None):
        if rados_module is None or rbd_module is None:
            rados_module, rbd_module = _import_bindings()
        self.config = config
        self.rados = rados_module
        self.rbd = rbd_module
        self._key = key
        self._options = dict(options or {})
        self._handle = None
        # A handle whose operations timed out during an outage was seen to keep timing out long after
        # the OSDs came back, so the next operation after a timeout gets a fresh one.  The old handle
        # may still be in use by other threads: it is retired, and shut down only by close().
        self._stale = False
        self._retired: list = []
        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------

    def connect(self) -> Cluster:
        settings = self.config.ceph
        key = self._key or self._key_from_keyring()
        handle = self.rados.Rados(rados_id=settings.client_id)  # no conffile: nothing is read from disk
        options = {
            "mon_host": mon_host(settings.monitors),
            "client_mount_timeout": settings.client_mount_timeout,
            "rados_mon_op_timeout": settings.rados_mon_op_timeout,
            "rados_osd_op_timeout": settings.rados_osd_op_timeout,
            "log_file": "",          # no client log file: it could collect object names
            "admin_socket": "",      # no socket per process in /run/ceph
            "keyring": "",           # the key comes from us, not from a default path
            "log_to_stderr": "false",
            "err_to_stderr": "false",
        }
        if self.config.layering.clone_format != "auto":
            options["rbd_default_clone_format"] = self.config.layering.clone_format
        options = {**self._options, **options}       # extra settings never undo the ones above
        with translated("configuring the Ceph client"):
            for name, value in options.items():
                handle.conf_set(name, str(value))
            handle.conf_set("key", key.reveal())
        started = time.monotonic()
        try:
            handle.connect()
        except Exception as exc:
            self._shutdown(handle)
            if not is_ceph_error(exc):
                raise
            raise self._connect_error(exc, time.monotonic() - started) from None
        self._handle = handle
        log.debug("connected to %s as %s", mon_host(settings.monitors), settings.entity)
        return self

    def _key_from_keyring(self) -> CephKey:
        settings = self.config.ceph
        if settings.keyring is None:
            raise errors.ConfigError(
                f"{self.config.path}: [ceph] keyring: not set, and no key was given from the libvirt secret")
        return read_key(settings.keyring, settings.entity)

    def _connect_error(self, exc: BaseException, elapsed: float) -> errors.VirtrbdError:
        """Say why connecting failed: no monitor reachable, or the credentials were refused."""
        settings = self.config.ceph
        code = abs(getattr(exc, "errno", None) or 0)
        monitors = ", ".join(str(m) for m in settings.monitors)
        if code in (errno_codes.EACCES, errno_codes.EPERM):
            return errors.AuthenticationError(
                f"monitor {monitors} refused {settings.entity}: wrong key or unknown user", errno=code)
        if code in (errno_codes.ENOENT, errno_codes.EINVAL):
            return errors.ConnectionFailedError(
                f"cannot resolve the monitor address {monitors}", errno=code)
        if code in (errno_codes.ETIMEDOUT, errno_codes.EINTR) or code == 0:
            reachable = reachable_monitor(settings.monitors, budget=0.5)
            if reachable is not None:
                return errors.AuthenticationError(
                    f"monitor {reachable} is reachable but did not accept {settings.entity} within "
                    f"{settings.client_mount_timeout:g} s: wrong key or unknown user", errno=errno_codes.EACCES)
            return errors.ConnectionFailedError(
                f"no monitor reachable at {monitors} within {settings.client_mount_timeout:g} s", errno=code or None)
        return translate(exc, f"connecting to {monitors} as {settings.entity}")

    @property
    def handle(self):
        """The connected ``rados.Rados``."""
        if self._handle is None:
            raise errors.CephError("not connected to the cluster")
        return self._handle

    def close(self) -> None:
        handle, self._handle = self._handle, None
        retired, self._retired = self._retired, []
        for old in [handle, *retired]:
            if old is not None:
                self._shutdown(old)

    def _fresh_if_stale(self) -> None:
        with self._lock:
            if not self._stale or self._handle is None:
                return
            retired = self._handle
            self.connect()
            self._retired.append(retired)
            self._stale = False
            log.info("reconnected to the cluster after an operation timed out")

    @staticmethod
    def _shutdown(handle) -> None:
        try:
            handle.shutdown()
        except Exception as exc:  # closing must never mask the error that got us here
            log.debug("rados shutdown: %r", exc)

    def __enter__(self) -> Cluster:
        return self.connect()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- pools and images -----------------------------------------------------

    @contextmanager
    def ioctx(self, pool: str) -> Iterator:
        """An open I/O context on ``pool``, closed on every path."""
        self._fresh_if_stale()
        try:
            with translated(f"pool {pool}", timeout=self.config.ceph.rados_osd_op_timeout):
                ioctx = self.handle.open_ioctx(pool)
            try:
                yield ioctx
            finally:
                ioctx.close()
        except errors.OperationTimeoutError:
            self._stale = True
            raise

    def image_names(self, pool: str) -> list[str]:
        """The names of ``pool``'s images, in librbd's order."""
        with self.ioctx(pool) as ioctx, translated(f"listing pool {pool}"):
            return self.rbd.RBD().list(ioctx)

    @contextmanager
    def image(self, pool: str, name: str, *, snapshot: str | None = None,
              read_only: bool = False) -> Iterator:
        """An open ``rbd.Image``, closed on every path (including a failed open)."""
        what = f"image {pool}/{name}" + (f"@{snapshot}" if snapshot else "")
        with self.ioctx(pool) as ioctx:
            try:
                with translated(what, timeout=self.config.ceph.rados_osd_op_timeout):
                    image = self.rbd.Image(ioctx, name, snapshot=snapshot, read_only=read_only)
            except errors.NotFoundError:
                if snapshot is None:
                    raise
                # librbd says ENOENT for a missing image and for a missing snapshot alike
                with self.image(pool, name, read_only=True):
                    pass
                raise errors.NotFoundError(f"snapshot {pool}/{name}@{snapshot}: does not exist",
                                           errno=errno_codes.ENOENT) from None
            try:
                yield image
            finally:
                with translated(f"closing {what}"):
                    image.close()


def reachable_monitor(monitors: tuple[Monitor, ...], budget: float) -> Monitor | None:
    """The first monitor that accepts a TCP connection within ``budget`` seconds in all.

    Used only after a failed connect, to tell "nobody answers" from "the monitor
    answers but refuses us"; librados reports both as a timeout.
    """
    deadline = time.monotonic() + budget
    for monitor in monitors:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for port in monitor.ports:
            if listening(monitor.host, port, timeout=remaining):
                return monitor
    return None
