"""``Cluster``: one connection to the cluster named by virtrbd.conf, and every pool and image operation.

The package's rules (timeouts set before connecting, the key handed over
in-process, every handle closed on every path) are kept here; see
``virtrbd.ceph``.  The ``rados`` and ``rbd`` modules are injectable, so unit
tests pass fakes built from the real bindings instead of patching globals.
"""

from __future__ import annotations

import errno as errno_codes
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from types import ModuleType

from .. import errors, exits
from ..config import Config
from ..keyring import CephKey, read_key
from ..monitor import Monitor, mon_host
from ..probe import listening
from ..spec import ImageSpec
from .image import RbdImage, parent_of
from .translate import is_ceph_error, translate, translated

log = logging.getLogger(__name__)


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
        self._settings_lock = threading.Lock()

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

    def forsake(self) -> None:
        """Give the connection up without a shutdown: a librbd call on it never returned (a monitor gone), and
        a shutdown would wait for it or abort.  Kept referenced until the process ends (``exits``)."""
        handles, self._handle, self._retired = [self._handle, *self._retired], None, []
        exits.keep_until_exit(*[handle for handle in handles if handle is not None])

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
            with translated(f"pool {pool}", timeout=self.config.ceph.rados_osd_op_timeout, missing="pool"):
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
    def image(self, pool: str, name: str | None = None, *, image_id: str | None = None,
              snapshot: str | None = None, read_only: bool = False,
              settings: Mapping[str, str] | None = None) -> Iterator[RbdImage]:
        """An open image, by name or by id (one in the trash has only its id), closed on every path.

        A missing image raises ``NotFoundError`` with ``missing`` ``"image"``, a
        missing snapshot of an image that exists ``"snapshot"``, a missing pool
        ``"pool"``.  ``settings`` are librbd settings for this open image alone
        (``_open_with``).
        """
        what = f"image {pool}/{name or image_id}" + (f"@{snapshot}" if snapshot else "")
        with self.ioctx(pool) as ioctx:
            try:
                by_id = {"image_id": image_id} if image_id is not None else {}
                with translated(what, timeout=self.config.ceph.rados_osd_op_timeout, missing="image"):
                    image = self._open_with(settings or {}, lambda: self.rbd.Image(
                        ioctx, name, snapshot=snapshot, read_only=read_only, **by_id))
            except errors.NotFoundError:
                if snapshot is None:
                    raise
                # librbd says ENOENT for a missing image and for a missing snapshot alike
                with self.image(pool, name, image_id=image_id, read_only=True):
                    pass
                raise errors.NotFoundError(f"snapshot {pool}/{name}@{snapshot}: does not exist",
                                           errno=errno_codes.ENOENT, missing="snapshot") from None
            try:
                yield image
            finally:
                with translated(f"closing {what}"):
                    image.close()

    def _open_with(self, settings: Mapping[str, str], open_image: Callable[[], RbdImage]) -> RbdImage:
        """``open_image()`` with ``settings`` in force for it alone.

        librbd copies the client's settings into an image when it opens it, and
        the open image keeps them: so they are this connection's for the moment
        of the open, then back as they were (a lock keeps two such opens apart;
        an open without settings in another thread meanwhile gets them too).
        Image metadata (``rbd config image set``) would reach every client that
        opens the image, a running QEMU too.
        """
        if not settings:
            return open_image()
        with self._settings_lock:
            handle = self.handle
            with translated("reading the Ceph client's settings"):
                before = {key: handle.conf_get(key) for key in settings}
            try:
                with translated("changing the Ceph client's settings"):
                    for key, value in settings.items():
                        handle.conf_set(key, value)
                return open_image()
            finally:
                with translated("restoring the Ceph client's settings"):
                    for key, value in before.items():
                        handle.conf_set(key, value)

    def exists(self, pool: str, name: str) -> bool:
        """Whether ``pool`` holds an image ``name``; a missing pool is an error, not a no."""
        try:
            with self.image(pool, name, read_only=True):
                return True
        except errors.NotFoundError as exc:
            if exc.missing == "image":
                return False
            raise

    def create(self, pool: str, name: str, size: int, *, order: int | None = None) -> None:
        """A new format-2 image; ``order``: log2 of its object size (None: the pool's default)."""
        options = {"order": order} if order else {}
        with self.ioctx(pool) as ioctx, translated(f"creating image {pool}/{name}"):
            self.rbd.RBD().create(ioctx, name, size, old_format=False, **options)

    def remove(self, pool: str, name: str, *, what: str | None = None) -> None:
        """Remove an image that has no snapshots (librbd refuses one that has: ``HasSnapshotsError``)."""
        with self.ioctx(pool) as ioctx, translated(what or f"removing image {pool}/{name}"):
            self.rbd.RBD().remove(ioctx, name)

    def move_to_trash(self, pool: str, name: str) -> None:
        """Defer an image's deletion: it leaves the pool's directory, its clones keep reading it."""
        with self.ioctx(pool) as ioctx, translated(f"moving image {pool}/{name} to the trash"):
            self.rbd.RBD().trash_move(ioctx, name, 0)

    def rename(self, pool: str, name: str, new_name: str) -> None:
        with self.ioctx(pool) as ioctx, translated(f"renaming {pool}/{name} to {new_name}"):
            self.rbd.RBD().rename(ioctx, name, new_name)

    def clone(self, parent: ImageSpec, child: ImageSpec) -> None:
        """A copy-on-write clone of the snapshot ``parent`` (clone v1 refuses an unprotected one: EINVAL)."""
        if parent.snapshot is None:
            raise errors.InvalidSpecError(f"{parent}: clone from a snapshot (POOL/IMAGE@SNAP)")
        with self.ioctx(parent.pool) as parent_ioctx, self.ioctx(child.pool) as child_ioctx, \
                translated(f"cloning {parent} to {child}"):
            self.rbd.RBD().clone(parent_ioctx, parent.image, parent.snapshot, child_ioctx, child.image)

    def parent_chain(self, image: RbdImage) -> list[ImageSpec]:
        """Ancestors of an open image (at its current snapshot), nearest first."""
        chain: list[ImageSpec] = []
        with ExitStack() as opened:
            current = image
            while (parent := parent_of(current)) is not None:
                if parent in chain or len(chain) > 64:
                    raise errors.CephError(f"parent chain of {chain[0]} loops or is absurdly deep")
                chain.append(parent)
                current = opened.enter_context(
                    self.image(parent.pool, parent.image, snapshot=parent.snapshot, read_only=True))
        return chain

    def blocklist(self, address: str) -> None:
        """Blocklist a client address (``profile rbd`` may): its watches end, its writes are refused."""
        command = json.dumps({"prefix": "osd blocklist", "blocklistop": "add", "addr": address})
        with translated(f"blocklisting client {address}", timeout=self.config.ceph.rados_mon_op_timeout):
            ret, _out, said = self.handle.mon_command(command, b"")
        if ret < 0:
            raise errors.CephError(f"blocklisting client {address}: {said or os.strerror(-ret)}", errno=-ret)

    def setting(self, name: str) -> str:
        """The value of a librados/librbd setting of this connection."""
        with translated(f"reading the Ceph client's setting {name}"):
            return self.handle.conf_get(name)

    def fsid(self) -> str:
        with translated("reading the cluster's fsid"):
            return self.handle.get_fsid()


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
