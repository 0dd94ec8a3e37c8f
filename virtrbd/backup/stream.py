"""Images as plain streams: the vocabulary the backup formats share, with no knowledge of Ceph.

An image *source* says where its data is (an allocation map: sorted, disjoint
``(offset, length)`` extents; everything else reads as zeros) and reads bytes,
possibly several reads at once.  A *sink* takes writes at offsets.  The formats
(``raw``, ``qcow2``, ``rbddiff``) are written against these ideas only, so they
are tested with in-memory images and judged by ``qemu-img`` without a cluster.

Three tools live here:

* ``is_zero`` / ``Granules``: writes that arrive in increasing offset order are
  cut into whole, aligned granules (4 KiB blocks for a sparse file, clusters for
  QCOW2) and only the granules holding a non-zero byte come out, coalesced into
  runs.  Comparing in place (``bytes.startswith``) keeps this at ~0.1 ms per MiB.
* ``ReadWindow``: keeps a bounded number of bytes of reads in flight and hands
  results back in the order they were asked for, so memory stays bounded
  whatever the image size while reads overlap.
* ``split_at``: cutting extents at chunk boundaries.
"""

from __future__ import annotations

import collections
import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, cast

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
    """What a restore writes to."""

    def write(self, offset: int, data: bytes | bytearray, start: int = 0, end: int | None = None) -> None:
        """``data[start:end]`` at ``offset``."""

    def zero(self, offset: int, length: int) -> None:
        """The range reads as zeros afterwards."""


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


# --- granules ---------------------------------------------------------------------------------------

Emit = Callable[[int, "bytes | bytearray", int, int], None]


class Granules:
    """Cuts increasing writes into runs of whole, aligned granules that hold a non-zero byte.

    ``write(offset, data, start, end)`` places ``data[start:end]`` at ``offset``;
    bytes never written are zeros (holes).  ``emit(offset, buffer, start, end)``
    receives each run: ``offset`` is a multiple of the granule and the run's
    length a multiple of it (the last granule of the image is padded with
    zeros).  ``buffer`` may be the caller's own object: ``emit`` must use it
    before it returns.  A granule that only some writes touch is assembled in a
    pending buffer until a write beyond it (or ``finish``) completes it.
    """

    def __init__(self, granule: int, emit: Emit):
        if granule <= 0 or granule & (granule - 1):
            raise ValueError("the granule must be a power of two")
        self.granule = granule
        self._emit = emit
        self._end = 0                              # end of the last write: writes must not go back
        self._pending_at: int | None = None        # offset of the partly written granule
        self._pending = bytearray(granule)

    def write(self, offset: int, data: bytes | bytearray, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        if offset < self._end:
            raise ValueError(f"write at {offset} goes back before {self._end}: writes must come in order")
        length = end - start
        if length <= 0:
            return
        self._end = offset + length
        g = self.granule
        # the head: bytes that share a granule with the pending one or start inside a granule
        if offset % g or self._pending_at is not None and offset < self._pending_at + g:
            granule_at = offset - offset % g
            if self._pending_at is not None and self._pending_at != granule_at:
                self._finish_pending()
            if self._pending_at is None:
                self._pending_at = granule_at
            take = min(length, granule_at + g - offset)
            self._pending[offset - granule_at:offset - granule_at + take] = memoryview(data)[start:start + take]
            offset, start, length = offset + take, start + take, length - take
            if offset % g == 0:
                self._finish_pending()
            if not length:
                return
        if self._pending_at is not None:
            self._finish_pending()
        # the middle: whole granules, scanned in place
        whole = length - length % g
        if whole:
            self._scan(offset, data, start, start + whole)
            offset, start, length = offset + whole, start + whole, length - whole
        # the tail: the start of a granule, pending until the next write or finish()
        if length:
            self._pending_at = offset
            self._pending[:length] = memoryview(data)[start:start + length]

    def finish(self) -> None:
        """Emit the pending granule, if it holds a non-zero byte."""
        if self._pending_at is not None:
            self._finish_pending()

    def _finish_pending(self) -> None:
        at, buf = self._pending_at, self._pending
        self._pending_at = None
        if at is not None and not is_zero(buf):
            self._emit(at, buf, 0, self.granule)
        self._pending = bytearray(self.granule)

    def _scan(self, offset: int, data: bytes | bytearray, start: int, end: int) -> None:
        """Emit the granules of ``data[start:end]`` (``offset`` aligned) that hold a non-zero byte, as runs."""
        g = self.granule
        run_from = start
        for index in zero_granules(data, start, end, g):
            at = start + index * g
            if at > run_from:
                self._emit(offset + run_from - start, data, run_from, at)
            run_from = at + g
        if end > run_from:
            self._emit(offset + run_from - start, data, run_from, end)


def zero_granules(data: bytes | bytearray, start: int, end: int, granule: int) -> list[int]:
    """Indexes of the all-zero granules of ``data[start:end]`` (a whole number of granules).

    Only a granule whose first and last bytes are zero can be empty; those
    bytes, sliced out with a stride (C speed, one byte per granule), leave
    few candidates in real data (1 in 65536 granules of random data) and
    only the candidates are compared whole.  A byte-by-byte search for
    zero runs costs a full pass over the data instead.
    """
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(memoryview(data)[start:end])
        start, end = 0, len(data)
    heads = data[start:end:granule]
    tails = data[start + granule - 1:end:granule]
    empty = zeros(granule)
    found = []
    index = heads.find(0)
    while index >= 0:
        if tails[index] == 0 and data.startswith(empty, start + index * granule):
            found.append(index)
        index = heads.find(0, index + 1)
    return found


# --- reads in flight, results in order ------------------------------------------------------------------

@dataclass
class Job:
    """Reads that belong together (one chunk of an image); ``key`` is the caller's."""

    key: object
    ranges: Sequence[tuple[int, int]]
    results: list = field(default_factory=list)
    remaining: int = 0
    error: BaseException | None = None

    @property
    def nbytes(self) -> int:
        return sum(length for _, length in self.ranges)


class ReadWindow:
    """Up to ``window_bytes`` (and ``max_ops`` reads) in flight; jobs come back in submission order.

    ``submit(offset, length, done)`` starts one read and arranges for
    ``done(data, error)`` to be called once, from any thread.  A job larger than
    the window still runs, alone.  ``close()`` waits for every read still in
    flight, so no callback outlives the image it reads from.
    """

    def __init__(self, submit: Callable[[int, int, Callable], None], *, window_bytes: int = 32 * MiB,
                 max_ops: int = 16):
        self._submit = submit
        self.window_bytes = window_bytes
        self.max_ops = max_ops
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._bytes = 0
        self._ops = 0
        self._outstanding = 0           # reads submitted whose callback has not run yet

    def run(self, jobs: Iterable[Job]) -> Iterator[Job]:
        """Yield each job with ``results`` filled (one bytes object per range), in order."""
        pending = iter(jobs)
        upcoming: Job | None = next(pending, None)
        try:
            while upcoming is not None or self._queue:
                while upcoming is not None and (not self._queue or self._fits(upcoming)):
                    self._start(upcoming)
                    upcoming = next(pending, None)
                head = self._queue[0]
                with self._cond:
                    wait_until(self._cond, lambda: head.remaining <= 0)  # noqa: B023 - waited on before the loop moves on
                self._queue.popleft()
                self._bytes -= head.nbytes
                self._ops -= len(head.ranges)
                if head.error is not None:
                    raise head.error
                yield head
        finally:
            self.close()

    def _fits(self, job: Job) -> bool:
        return (self._bytes + job.nbytes <= self.window_bytes
                and self._ops + len(job.ranges) <= self.max_ops)

    def _start(self, job: Job) -> None:
        check_cancel()              # before anything is counted: a safe point
        job.results = [None] * len(job.ranges)
        job.remaining = len(job.ranges)
        self._queue.append(job)
        self._bytes += job.nbytes
        self._ops += len(job.ranges)
        for index, (offset, length) in enumerate(job.ranges):
            with self._cond:
                self._outstanding += 1
            try:
                self._submit(offset, length, self._callback(job, index, length))
            except BaseException:
                # Refused, so no callback will come.  (Only a forced interrupt could land after the read
                # left: its late callback then takes the count below zero, which the waits tolerate.)
                with self._cond:
                    self._outstanding -= 1
                    job.remaining -= 1
                raise

    def _callback(self, job: Job, index: int, length: int) -> Callable:
        def done(data, error) -> None:
            with self._cond:
                if error is None and (data is None or len(data) != length):
                    error = OSError(f"short read: {0 if data is None else len(data)} of {length} bytes")
                if error is not None:
                    job.error = job.error or error
                else:
                    job.results[index] = data
                job.remaining -= 1
                self._outstanding -= 1
                self._cond.notify_all()
        return done

    def close(self, timeout: float = 120.0) -> None:
        """Wait until no read is in flight (results are dropped)."""
        with self._cond:
            self._cond.wait_for(lambda: self._outstanding <= 0, timeout=timeout)
        self._queue.clear()
        self._bytes = self._ops = 0


# --- an image read chunk by chunk ------------------------------------------------------------------------

@dataclass
class Chunk:
    """One CHUNK-aligned piece of an image that holds allocated data.

    ``data`` is the chunk's full logical content (holes as zeros); ``extents``
    are the allocated ``(start, end)`` ranges in it, absolute offsets.
    """

    index: int
    offset: int
    length: int
    extents: list[tuple[int, int]]
    data: bytes | bytearray


def normalized(extents: Iterable[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """``(offset, length)`` extents as sorted, merged ``(start, end)`` ranges clipped to ``[0, limit)``."""
    ranges = sorted((max(0, o), min(o + n, limit)) for o, n in extents if n > 0)
    merged: list[list[int]] = []
    for start, end in ranges:
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _read_ranges(extents: list[tuple[int, int]], merge_gap: int) -> list[tuple[int, int]]:
    """Fewer, larger reads: extents closer than ``merge_gap`` are read as one (holes read as zeros)."""
    reads: list[list[int]] = []
    for start, end in extents:
        if reads and start - reads[-1][1] <= merge_gap:
            reads[-1][1] = end
        else:
            reads.append([start, end])
    return [(s, e - s) for s, e in reads]


def chunk_jobs(source: Source, size: int, *, chunk: int = CHUNK, map_window: int = 64 * CHUNK,
               merge_gap: int = 256 * KiB) -> Iterator[Job]:
    """One job per chunk with allocated data.  The allocation map is asked for ``map_window`` bytes at a
    time, so a huge, fragmented image never has its whole map in memory."""
    for window_start in range(0, size, map_window):
        window_end = min(size, window_start + map_window)
        extents = normalized(source.extents(window_start, window_end - window_start), window_end)
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for start, end in extents:
            for piece_start, piece_length in split_at(start, end - start, chunk):
                by_chunk.setdefault(piece_start // chunk, []).append((piece_start, piece_start + piece_length))
        for index in sorted(by_chunk):
            inside = by_chunk[index]
            offset = index * chunk
            yield Job(key=Chunk(index, offset, min(chunk, size - offset), inside, b""),
                      ranges=_read_ranges(inside, merge_gap))


def assemble(job: Job) -> Chunk:
    """The job's chunk with ``data`` filled: the read itself when it covers the chunk, else a copy."""
    chunk = cast(Chunk, job.key)
    if len(job.ranges) == 1 and job.ranges[0] == (chunk.offset, chunk.length):
        chunk.data = job.results[0]
        return chunk
    buf = bytearray(chunk.length)
    for (offset, length), data in zip(job.ranges, job.results, strict=False):
        buf[offset - chunk.offset:offset - chunk.offset + length] = data
    chunk.data = buf
    return chunk


def read_chunks(source: Source, size: int, *, window_bytes: int = 32 * MiB, max_ops: int = 16,
                chunk: int = CHUNK) -> Iterator[Chunk]:
    """The chunks of ``source`` that hold allocated data, in order, read ahead within the window."""
    window = ReadWindow(source.submit_read, window_bytes=window_bytes, max_ops=max_ops)
    for job in window.run(chunk_jobs(source, size, chunk=chunk)):
        yield assemble(job)


class MemorySource:
    """An image held in memory, with an explicit allocation map: for tests and as the model of a source."""

    def __init__(self, data: bytes, extents: Iterable[tuple[int, int]] | None = None):
        self.size = len(data)
        self.map = normalized(extents if extents is not None else [(0, len(data))], self.size)
        content = bytearray(self.size)          # outside the map an image reads as zeros
        for start, end in self.map:
            content[start:end] = data[start:end]
        self.data = bytes(content)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        end = offset + length
        return [(max(s, offset), min(e, end) - max(s, offset)) for s, e in self.map if s < end and e > offset]

    def submit_read(self, offset: int, length: int, done) -> None:
        done(self.data[offset:offset + length], None)


class MemorySink:
    """An image in memory as a restore target: for tests and as the model of a sink."""

    def __init__(self, size: int):
        self.data = bytearray(size)
        self.written: list[tuple[int, int]] = []               # (offset, length) of every write, to check sparseness

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        end = min(end, start + max(0, self.size - offset))
        if end > start:
            self.data[offset:offset + end - start] = memoryview(data)[start:end]
            self.written.append((offset, end - start))

    def zero(self, offset: int, length: int) -> None:
        length = min(length, self.size - offset)
        self.data[offset:offset + length] = bytes(length)

    def resize(self, size: int) -> None:
        if size < self.size:
            del self.data[size:]
        else:
            self.data.extend(bytes(size - self.size))

    def drain(self) -> None:
        pass

    def flush(self) -> None:
        pass
