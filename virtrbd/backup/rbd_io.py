"""An RBD image as a ``stream.Source`` (a snapshot read) and a ``stream.Sink`` (an image written).

* Reading: the allocation map comes from ``diff_iterate`` (``whole_object=False``:
  exact extents; from nothing for a full backup, from the older snapshot for an
  incremental); data from ``aio_read`` with at most ``WINDOW_BYTES`` in
  ``MAX_OPS`` reads in flight, handed back in order (``window.ReadWindow``).
* Writing: ``aio_write`` / ``aio_write_zeroes`` within the same bound; a write
  that could overlap one still in flight waits for it first.

Memory stays bounded whatever the image size (see docs/performance.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from ..allocator import mallopt, one_arena
from ..ceph import FADVISE_NOCACHE, errno_error, translated
from ..spec import ImageSpec
from .results import SourceFacts
from .stream import CHUNK, MiB, wait_until, within

#: reads (or writes) in flight: 16 MiB, in reads of at most READ_BYTES.  A read in flight costs a
#: multiple of its size (librados' receive buffer, librbd's assembly, ours), more so for 4 MiB reads
#: than for 1 MiB ones; so a backup stays within the 96 MiB its benchmark holds it to.  Small reads
#: and writes (a scattered change, a scattered image restored) are bound by the OSD's latency, not by
#: bytes: up to MAX_OPS of them are in flight (docs/performance.md).
WINDOW_BYTES = 16 * MiB
MAX_OPS = 64
READ_BYTES = 1 * MiB


def return_large_buffers_to_the_system(threshold: int = CHUNK + 2048, keep: int = 64 * MiB) -> bool:
    """Tune glibc's allocator for a process that moves many 4 MiB buffers: a bounded peak, few page faults.

    Reading a snapshot, librados receives each 4 MiB read into a page-aligned
    buffer (4 MiB plus alignment slack) allocated in its messenger threads;
    glibc's default keeps freed ones in heaps that fragment, and the backup's
    peak RSS then depends on thread timing.  Above ``threshold`` those buffers
    are mapped and unmapped, so the peak stays bounded.  Python's own 4 MiB
    ``bytes`` (4 MiB + 33) stay below it and are recycled from the heap: a lower
    threshold would fault their pages in again and again.  Setting the
    threshold also fixes glibc's trim threshold at 128 KiB, and every 4 MiB
    buffer freed at the top of the heap would go back to the system and be
    faulted in again by the next one: ``keep`` bytes of free heap stay mapped
    instead (most of a backup's system time went to those faults).  And one
    arena for every thread: a buffer librados frees in one thread is reused
    by the next allocation in another, not kept aside in a per-thread heap
    (it holds only if set before the program's first thread: ``allocator``).
    Process-wide, so the command calls it; a program using the library may
    too.  False where the C library is not glibc.  The figures:
    docs/performance.md.
    """
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return mallopt(M_MMAP_THRESHOLD, threshold) and mallopt(M_TRIM_THRESHOLD, keep) and one_arena()


class RbdSource:
    """An open RBD image (snapshot) as a ``stream.Source``; reads carry the ``NOCACHE`` hint (read once)."""

    def __init__(self, image, what: str):
        self.image = image
        self.what = what
        with translated(f"reading the size of {what}"):
            self.size = image.size()

    def changes(self, offset: int, length: int, from_snapshot: str | None) -> list[tuple[int, int, bool]]:
        """``(offset, length, exists)`` of what differs from ``from_snapshot`` (None: what is allocated)."""
        found: list[tuple[int, int, bool]] = []

        def collect(off: int, n: int, exists: bool) -> int:
            found.append((off, n, bool(exists)))
            return 0

        with translated(f"reading the allocation map of {self.what}"):
            self.image.diff_iterate(offset, length, from_snapshot, collect, include_parent=True,
                                    whole_object=False)
        return found

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [(o, n) for o, n, exists in self.changes(offset, length, None) if exists]

    def submit_read(self, offset: int, length: int, done) -> None:
        what = f"reading {self.what} at {offset}"

        def complete(completion, data) -> None:
            ret = completion.get_return_value()
            if ret < 0:
                done(None, errno_error(ret, what))
            else:
                done(data, None)

        with translated(what):
            self.image.aio_read(offset, length, complete, FADVISE_NOCACHE)


class RbdSink:
    """An open, writable RBD image as a ``stream.Sink``: bounded asynchronous writes.

    Writes carry the ``NOCACHE`` hint, as ``rbd import``'s do: a restored image
    is written once, and keeping it in the OSDs' caches only evicts what the
    running guests read (and costs the OSDs time).
    The data of a write is kept alive until librbd completes it: an image
    opened with zero-copy writes (``RESTORE_CONFIG``) sends the caller's
    buffer itself, and the Python binding does not hold it.
    """

    def __init__(self, image, what: str, *, window_bytes: int = WINDOW_BYTES, max_ops: int = MAX_OPS):
        self.image = image
        self.what = what
        self.window_bytes = window_bytes
        self.max_ops = max_ops
        with translated(f"reading the size of {what}"):
            self.size = image.size()
        self.written_bytes = 0
        self._cond = threading.Condition()
        self._bytes = 0
        self._ops = 0
        self._error: BaseException | None = None
        self._high = 0               # end of the furthest write since the last drain

    def resize(self, size: int) -> None:
        self.drain()
        resize_image(self.image, self.what, size)
        self.size = size

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = within(self.size, offset, start, len(data) if end is None else end)
        length = end - start
        if length <= 0:
            return
        if isinstance(data, bytes) and start == 0 and end == len(data):
            payload = data
        else:
            payload = bytes(memoryview(data)[start:end])
        self._reserve(offset, length, length)
        self._submit(lambda cb: self.image.aio_write(payload, offset, cb, FADVISE_NOCACHE), length,
                     f"writing {self.what} at {offset}", payload)
        self.written_bytes += length

    def zero(self, offset: int, length: int) -> None:
        length = min(length, self.size - offset)
        if length <= 0:
            return
        self._reserve(offset, length, 0)
        self._submit(lambda cb: self.image.aio_write_zeroes(offset, length, cb), 0,
                     f"zeroing {self.what} at {offset}")

    def _reserve(self, offset: int, length: int, nbytes: int) -> None:
        with self._cond:
            if offset < self._high:                 # might overlap a write in flight: let it land first
                wait_until(self._cond, lambda: self._ops <= 0)
                self._high = 0
            wait_until(self._cond, lambda: self._error is not None or (
                self._ops < self.max_ops and (self._bytes + nbytes <= self.window_bytes or self._ops == 0)))
            self._raise_error()
            self._bytes += nbytes
            self._ops += 1
            self._high = max(self._high, offset + length)

    def _submit(self, start_io: Callable, nbytes: int, what: str, buffer: bytes | None = None) -> None:
        """Start one write; ``buffer`` (the data a zero-copy write sends) is held until it completes."""
        def complete(completion) -> None:
            nonlocal buffer
            buffer = None
            ret = completion.get_return_value()
            with self._cond:
                if ret < 0 and self._error is None:
                    self._error = errno_error(ret, what)
                self._bytes -= nbytes
                self._ops -= 1
                self._cond.notify_all()
        try:
            with translated(what):
                start_io(complete)
        except BaseException:       # refused by librbd, so no callback will come (see ReadWindow._start)
            with self._cond:
                self._bytes -= nbytes
                self._ops -= 1
            raise

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Wait for every write in flight; raise the first that failed."""
        with self._cond:
            wait_until(self._cond, lambda: self._ops <= 0)
            self._high = 0
            self._raise_error()

    def flush(self) -> None:
        self.drain()
        with translated(f"flushing {self.what}"):
            self.image.flush()

    def close(self, timeout: float = 120.0) -> None:
        """Wait (bounded) for writes in flight without raising: used on the way out of a failure."""
        with self._cond:
            self._cond.wait_for(lambda: self._ops <= 0, timeout=timeout)


def source_facts(image, spec: ImageSpec) -> SourceFacts:
    with translated(f"reading {spec}"):
        snapshots = {s["name"]: s["id"] for s in image.list_snaps()}
        snapshot_id = snapshots.get(spec.snapshot, 0)
        taken = image.get_snap_timestamp(snapshot_id) if spec.snapshot in snapshots else None
        return SourceFacts(size=image.size(), image_id=image.id(), snapshot_id=snapshot_id,
                           object_size=int(image.stat()["obj_size"]), snapshots=snapshots,
                           snapshot_time=_utc(taken))


def _utc(moment: datetime | None) -> str | None:
    """librbd's snapshot time (a naive datetime in UTC) as the manifest writes times."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="seconds")


def resize_image(image, what: str, size: int) -> None:
    with translated(f"resizing {what} to {size} bytes"):
        image.resize(size, allow_shrink=True)
