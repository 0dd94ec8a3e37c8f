"""Reads in flight, results in order: memory stays bounded whatever the image size while reads overlap.

``ReadWindow`` keeps a bounded number of bytes of reads in flight and hands
results back in the order they were asked for; ``read_chunks`` reads a whole
``stream.Source`` that way, one ``CHUNK``-aligned piece holding data at a time.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

from .stream import CHUNK, KiB, MiB, Source, check_cancel, split_at, wait_until


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

    def run(self, jobs: Iterable[Job]) -> Generator[Job, None, None]:
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
    read_bytes: int = 0


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


def _read_ranges(extents: list[tuple[int, int]], merge_gap: int, max_read: int) -> list[tuple[int, int]]:
    """Fewer, larger reads: extents closer than ``merge_gap`` are read as one (holes read as zeros); none
    longer than ``max_read`` or crossing a multiple of it."""
    reads: list[list[int]] = []
    for start, end in extents:
        if reads and start - reads[-1][1] <= merge_gap:
            reads[-1][1] = end
        else:
            reads.append([start, end])
    return [piece for s, e in reads for piece in split_at(s, e - s, max_read)]


def chunk_jobs(source: Source, size: int, *, chunk: int = CHUNK, map_window: int = 64 * CHUNK,
               merge_gap: int = 256 * KiB, max_read: int = CHUNK) -> Iterator[Job]:
    """One job per chunk with allocated data, its reads at most ``max_read`` long.  The allocation map is
    asked for ``map_window`` bytes at a time, so a huge, fragmented image never has its whole map in memory."""
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
            reads = _read_ranges(inside, merge_gap, max_read)
            yield Job(key=Chunk(index, offset, min(chunk, size - offset), inside, b"",
                                read_bytes=sum(length for _, length in reads)), ranges=reads)


def assemble(job: Job) -> Chunk:
    """The job's chunk with ``data`` filled: the read itself when it covers the chunk, else a copy."""
    chunk = cast(Chunk, job.key)
    if len(job.ranges) == 1 and job.ranges[0] == (chunk.offset, chunk.length):
        chunk.data = job.results[0]
        return chunk
    buf = bytearray(chunk.length)
    view = memoryview(buf)                  # a bytearray's own slice assignment copies the data twice
    for (offset, length), data in zip(job.ranges, job.results, strict=False):
        view[offset - chunk.offset:offset - chunk.offset + length] = data
    view.release()
    chunk.data = buf
    return chunk


def read_chunks(source: Source, size: int, *, window_bytes: int = 32 * MiB, max_ops: int = 16,
                chunk: int = CHUNK, max_read: int = CHUNK) -> Generator[Chunk, None, None]:
    """The chunks of ``source`` that hold allocated data, in order, read ahead within the window."""
    window = ReadWindow(source.submit_read, window_bytes=window_bytes, max_ops=max_ops)
    for job in window.run(chunk_jobs(source, size, chunk=chunk, max_read=max_read)):
        yield assemble(job)


def read_chunk_parts(source: Source, size: int, *, window_bytes: int = 32 * MiB, max_ops: int = 16,
                     chunk: int = CHUNK, max_read: int = CHUNK
                     ) -> Generator[tuple[Chunk, list[tuple[int, bytes]]], None, None]:
    """Like ``read_chunks``, without assembling: each chunk (``data`` left empty) with its reads as
    ``(offset, data)``, sorted; the chunk's other bytes are zeros.  A backup hashes and writes the
    reads as they came, and so copies none of its data."""
    window = ReadWindow(source.submit_read, window_bytes=window_bytes, max_ops=max_ops)
    for job in window.run(chunk_jobs(source, size, chunk=chunk, max_read=max_read)):
        reads = [(offset, data) for (offset, _length), data in zip(job.ranges, job.results, strict=True)]
        yield cast(Chunk, job.key), reads
