"""librbd's live import of a file ("instant restore"): prepare, execute, commit or abort, and its status.

``migration_prepare_import`` makes an image whose missing blocks are read from
a file by whichever librbd client opens it; ``migration_execute`` copies the
rest (run by the image's exclusive-lock owner: when a running QEMU holds the
lock, librbd hands the work to that QEMU); ``migration_commit`` cuts the image
loose from the file.  A RAW source is read as all data: librbd's copy would
write every object whole, holes as 4 MiB of zeros and a partly written object
with its zeros too.  So ``claim_objects`` writes them first: each object in one
exclusive create that carries only its data (none for a hole), which fails on
an object a client already wrote (RADOS orders the two; librbd's copy-up of an
existing object is a no-op), and the object map is rebuilt so the copy skips
them.  Until then a client reads those objects from the file, as before."""

from __future__ import annotations

import errno as errno_codes
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import errors
from .cluster import Cluster
from .translate import errno_error, translated

#: librbd's migration states (cls::rbd::MigrationState), as ``rbd migration`` names them
STATES = {0: "error", 1: "preparing", 2: "prepared", 3: "executing", 4: "executed", 5: "aborting"}
#: librbd settings for the object map's rebuild and the sparsify: each asks the OSDs about every object
#: of the image (or has them drop it), work the OSDs do and whose latency bounds it, with no data in the
#: client; the copier's connection keeps 4 for librbd's copy, which does hold data (instant_copy).  32 in
#: flight took the sparsify of a 16 GiB image from 1.1-1.4 s to 0.6-0.7 s (docs/performance.md).
PER_OBJECT_SETTINGS = {"rbd_concurrent_management_ops": "32"}
#: object writes in flight, and their bytes (the bytes bound the client's memory)
_IN_FLIGHT = 64
_IN_FLIGHT_BYTES = 16 << 20


@dataclass(frozen=True)
class MigrationStatus:
    state: str
    description: str


@dataclass(frozen=True)
class Claimed:
    written: int                # objects created with their data
    empty: int                  # objects created empty: holes of the file


class _Window:
    """At most ``_IN_FLIGHT`` writes and ``_IN_FLIGHT_BYTES`` in flight (a larger write goes alone)."""

    def __init__(self) -> None:
        self.ops = self.bytes = 0
        self.results: list[tuple[int, bool]] = []       # (librados' return value, whether it carried data)
        self._changed = threading.Condition()

    def enter(self, size: int) -> None:
        with self._changed:
            while self.ops >= _IN_FLIGHT or (self.ops and self.bytes + size > _IN_FLIGHT_BYTES):
                self._changed.wait()
            self.ops += 1
            self.bytes += size

    def leaver(self, size: int, data: bool) -> Callable[[object], None]:
        def left(completion) -> None:
            with self._changed:
                self.results.append((completion.get_return_value(), data))
                self.ops -= 1
                self.bytes -= size
                self._changed.notify_all()
        return left

    def drain(self) -> None:
        with self._changed:
            while self.ops:
                self._changed.wait()


class LiveImport:
    """The live-import calls on one connection; every librbd exception leaves as a ``virtrbd.errors`` class."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def prepare(self, pool: str, name: str, source: dict) -> None:
        """An image ``pool/name`` whose content is read from ``source`` (a librbd source-spec) until committed."""
        with self.cluster.ioctx(pool) as ioctx, translated(f"image {pool}/{name}"):
            self.cluster.rbd.RBD().migration_prepare_import(json.dumps(source), ioctx, name)

    def status(self, pool: str, name: str) -> MigrationStatus | None:
        """Where the import into ``pool/name`` stands; None when the image is not being migrated."""
        with self.cluster.ioctx(pool) as ioctx:
            try:
                with translated(f"image {pool}/{name}", missing="image"):
                    found = self.cluster.rbd.RBD().migration_status(ioctx, name)
            except errors.VirtrbdError as exc:
                if exc.errno == errno_codes.EINVAL:
                    return None
                raise
        return MigrationStatus(STATES.get(found["state"], str(found["state"])), found["state_description"])

    def execute(self, pool: str, name: str, on_progress: Callable[[int, int], object] | None = None) -> None:
        """Copy what the image still reads from its source; resumes where an interrupted copy stopped."""
        with self.cluster.ioctx(pool) as ioctx, translated(f"copying into {pool}/{name}"):
            self.cluster.rbd.RBD().migration_execute(ioctx, name, on_progress=on_progress)

    def commit(self, pool: str, name: str) -> None:
        with self.cluster.ioctx(pool) as ioctx, translated(f"committing the import into {pool}/{name}"):
            self.cluster.rbd.RBD().migration_commit(ioctx, name)

    def abort(self, pool: str, name: str) -> None:
        """Undo the import: the image is removed (librbd refuses while a client has it open: BusyError)."""
        with self.cluster.ioctx(pool) as ioctx, translated(f"aborting the import into {pool}/{name}"):
            self.cluster.rbd.RBD().migration_abort(ioctx, name)

    def address(self) -> str:
        """This connection's client address, as librbd names an exclusive-lock owner."""
        with translated("reading this client's address"):
            return str(self.cluster.handle.get_addrs())

    def evict(self, pool: str, name: str, addresses: set[str]) -> int:
        """Evict dead clients (``addresses``, processes known gone) from the image: its exclusive lock broken
        where one of them holds it, their watches ended by blocklisting them; the number evicted.

        A killed process keeps its watch for the OSD's watch timeout (30 s):
        until then every notification about the image (a metadata change, the
        commit) waits for its answer, and its lock stops the next copy.  No
        other client is ever touched, this connection least of all.
        """
        addresses = addresses - {self.address()}
        if not addresses:
            return 0
        evicted = set()
        with self.cluster.image(pool, name) as image, translated(f"image {pool}/{name}: evicting dead clients"):
            for owner in image.lock_get_owners():
                if owner["owner"] in addresses:
                    image.lock_break(owner["mode"], owner["owner"])         # blocklists it too
                    evicted.add(owner["owner"])
            watching = {w["addr"] for w in image.watchers_list()} & addresses - evicted
        for address in sorted(watching):
            self.cluster.blocklist(address)
        return len(evicted | watching)

    def claim_objects(self, pool: str, name: str, objects: Iterable[tuple[int, list[tuple[int, bytes]]]]
                      ) -> Claimed | None:
        """Create each object ``(number, pieces)`` that no client has written yet, with its ``pieces`` (offset
        in the object, bytes; none: an empty object) in one atomic operation, then rebuild the object map.

        Only for a plain layout (no striping, no separate data pool): elsewhere the
        object numbering differs, ``objects`` is left unread and None returned, and
        librbd's copy does it all.
        """
        with self.cluster.image(pool, name) as image, translated(f"image {pool}/{name}"):
            if image.stripe_count() != 1:
                return None
            prefix = image.stat()["block_name_prefix"]
            data_pool = image.data_pool_id()
        what = f"image {pool}/{name}: writing objects"
        with self.cluster.ioctx(pool) as ioctx:
            if data_pool not in (-1, ioctx.get_pool_id()):
                return None
            window = _Window()
            try:
                with translated(what):
                    for number, pieces in objects:
                        size = sum(len(data) for _, data in pieces)
                        window.enter(size)
                        with self.cluster.rados.WriteOpCtx() as op:
                            op.new(self.cluster.rados.LIBRADOS_CREATE_EXCLUSIVE)
                            for offset, data in pieces:
                                op.write(data, offset)
                            ioctx.operate_aio_write_op(op, f"{prefix}.{number:016x}",
                                                       oncomplete=window.leaver(size, bool(pieces)))
            finally:
                window.drain()              # never close the pool's context under writes in flight
        failed = [r for r, _ in window.results if r < 0 and r != -errno_codes.EEXIST]
        if failed:
            raise errno_error(failed[0], what)
        claimed = Claimed(written=sum(1 for r, data in window.results if r == 0 and data),
                          empty=sum(1 for r, data in window.results if r == 0 and not data))
        with self.cluster.image(pool, name, settings=PER_OBJECT_SETTINGS) as image, \
                translated(f"image {pool}/{name}: rebuilding its object map"):
            image.rebuild_object_map()
        return claimed

    def sparsify(self, pool: str, name: str, granularity: int) -> None:
        """Drop objects that hold only zeros (empty ones included), as ``rbd sparsify`` does, online."""
        with self.cluster.image(pool, name, settings=PER_OBJECT_SETTINGS) as image, \
                translated(f"image {pool}/{name}: sparsifying"):
            image.sparsify(granularity)
