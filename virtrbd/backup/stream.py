"""Images as plain streams: the vocabulary the backup formats share, with no knowledge of Ceph.

An image *source* says where its data is (an allocation map: sorted, disjoint
``(offset, length)`` extents; everything else reads as zeros) and reads bytes,
possibly several reads at once.  A *sink* takes writes at offsets.  The formats
(``raw``, ``qcow2``, ``rbddiff``) are written against these ideas only, so they
are tested with in-memory images and judged by ``qemu-img`` without a cluster.

Here: the units (``CHUNK``, ``BLOCK``), zero tests and runs, cutting extents
at chunk boundaries, the ``Source`` and ``Sink`` protocols, and cancellation.
Beside it: ``granules`` (writes cut into whole non-zero granules), ``window``
(reads in flight, results in order, an image read chunk by chunk) and
``memory`` (an image in memory as a source or a sink).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

KiB = 1 << 10
MiB = 1 << 20

#: the unit of reading, hashing and progress: 4 MiB, the default RBD object size
CHUNK = 4 * MiB
#: the filesystem block: the granule of holes in a sparse RAW file and of O_DIRECT alignment
BLOCK = 4 * KiB

_ZEROS: dict[int, bytes] = {}


def zeros(length: int) -> bytes:
    """A shared all-zero bytes object (cached for the few sizes used over and over)."""
    cached = _ZEROS.get(length)
    if cached is None:
        cached = bytes(length)
        if length in (BLOCK, 64 * KiB, CHUNK) or (length <= 2 * MiB and length & (length - 1) == 0):
            _ZEROS[length] = cached        # powers of two up to 2 MiB (granules) and the chunk: bounded
    return cached


def is_zero(data: bytes | bytearray, start: int = 0, end: int | None = None) -> bool:
    """True when ``data[start:end]`` holds only zero bytes; compared in place, without a copy."""
    end = len(data) if end is None else end
    if end <= start:
        return True
    if isinstance(data, (bytes, bytearray)):
        return data.startswith(zeros(end - start), start)
    return bytes(memoryview(data)[start:end]) == zeros(end - start)


def nonzero_runs(data: bytes | bytearray, start: int = 0, end: int | None = None, *,
                 gap: int = 512) -> Iterator[tuple[int, int]]:
    """``(run_start, run_end)`` of the bytes in ``data[start:end]`` that hold data: zero stretches of
    at least ``gap`` bytes separate runs, and every run begins and ends with a non-zero byte.

    The scanning is done by ``bytes.find`` and ``strip`` (C speed): random data costs one pass,
    mostly empty data one step per run.
    """
    end = len(data) if end is None else end
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(memoryview(data)[start:end])
        start, end = 0, len(data)
    hole = zeros(gap)
    pos = start
    while pos < end:
        # skip zeros to the next data byte
        stripped = len(data[pos:end].lstrip(b"\0")) if end - pos <= gap else None
        if stripped is not None:
            first = end - stripped
        else:
            first = pos
            while first < end and data.startswith(hole, first) and first + gap <= end:
                first += gap
            chunk = data[first:min(end, first + gap)]
            first += len(chunk) - len(chunk.lstrip(b"\0"))
        if first >= end:
            return
        found = data.find(hole, first, end)
        last = end if found < 0 else found
        run = data[max(first, last - gap):last]
        last -= len(run) - len(run.rstrip(b"\0"))
        yield first, last
        pos = last if found < 0 else found


def within(size: int, offset: int, start: int, end: int) -> int:
    """``end`` cut so that ``data[start:end]`` written at ``offset`` stops at ``size`` (a padded last
    granule of the image must not grow it)."""
    return min(end, start + max(0, size - offset))


def split_at(offset: int, length: int, boundary: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` cut so that no piece crosses a multiple of ``boundary``."""
    end = offset + length
    while offset < end:
        piece = min(end, (offset // boundary + 1) * boundary) - offset
        yield offset, piece
        offset += piece


class Source(Protocol):
    """What a backup reads from (an RBD snapshot, a file, bytes in a test)."""

    size: int

    def extents(self, offset: int, length: int) -> Iterable[tuple[int, int]]:
        """Allocated ``(offset, length)`` extents within the range, sorted and disjoint."""

    def submit_read(self, offset: int, length: int, done: Callable[[bytes | None, BaseException | None], None]) -> None:
        """Start reading; ``done(data, None)`` or ``done(None, error)`` is called once, from any thread."""


class Sink(Protocol):
    """What a restore writes to: writes may stay in flight until ``drain`` (or ``flush``) returns."""

    size: int
    written_bytes: int

    def write(self, offset: int, data: bytes | bytearray, start: int = 0, end: int | None = None) -> None:
        """``data[start:end]`` at ``offset``."""

    def zero(self, offset: int, length: int) -> None:
        """The range reads as zeros afterwards."""

    def resize(self, size: int) -> None:
        """The image is ``size`` bytes long afterwards (an incremental may change the size)."""

    def drain(self) -> None:
        """Wait for every write in flight; raise the first that failed."""

    def flush(self) -> None:
        """Drain, and have the data reach stable storage."""

    def close(self) -> None:
        """Wait (bounded) for writes in flight without raising: on the way out of a failure."""


# --- cancellation ------------------------------------------------------------------------------------

class Cancelled(KeyboardInterrupt):
    """A backup, restore or verification was asked to stop; it stopped at a safe point and cleaned up."""


#: the process-wide stop request (``cancel()``; the command's SIGINT/SIGTERM/SIGHUP handler sets it)
CANCEL = threading.Event()
#: the event the running operation obeys: CANCEL unless the caller gave its own (see ``cancellable``)
_current_cancel: contextvars.ContextVar[threading.Event] = contextvars.ContextVar("virtrbd_cancel", default=CANCEL)
#: how often a wait looks at the stop request
POLL = 0.25


def cancel() -> None:
    """Ask every backup, restore or verification in this process that has no event of its own to stop."""
    CANCEL.set()


@contextmanager
def cancellable(event: threading.Event | None) -> Iterator[None]:
    """Within the block, the operation stops when ``event`` is set (None: the process-wide CANCEL).

    Every check runs in the thread that called the operation, so a context
    variable carries the event to them.
    """
    token = _current_cancel.set(event if event is not None else CANCEL)
    try:
        yield
    finally:
        _current_cancel.reset(token)


def check_cancel() -> None:
    """Raise ``Cancelled`` if asked to stop.  Called only where stopping leaves nothing half-counted."""
    if _current_cancel.get().is_set():
        raise Cancelled("cancelled")


def wait_until(cond: threading.Condition, predicate: Callable[[], bool]) -> None:
    """``cond.wait_for(predicate)`` (lock held), looking at CANCEL between short waits."""
    while not predicate():
        cond.wait(POLL)
        check_cancel()
