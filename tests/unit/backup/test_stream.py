"""Images as streams: zero detection, granule assembly, ordered parallel reads, chunking."""

from __future__ import annotations

import random
import threading
import time

import pytest

from virtrbd.backup.granules import Granules
from virtrbd.backup.memory import MemorySink, MemorySource
from virtrbd.backup.stream import BLOCK, CHUNK, Cancelled, cancellable, is_zero, split_at
from virtrbd.backup.window import Job, ReadWindow, normalized, read_chunks

from .conftest import scattered


def test_is_zero_compares_in_place():
    data = bytes(10) + b"\1" + bytes(10)
    assert is_zero(data, 0, 10)
    assert not is_zero(data, 5, 15)
    assert is_zero(data, 11)
    assert is_zero(bytearray(8))
    assert not is_zero(memoryview(b"\0\0\3"))
    assert is_zero(b"abc", 2, 2)


def test_split_at_cuts_on_boundaries():
    assert list(split_at(3, 10, 4)) == [(3, 1), (4, 4), (8, 4), (12, 1)]
    assert list(split_at(8, 4, 4)) == [(8, 4)]
    assert list(split_at(0, 0, 4)) == []


def test_normalized_sorts_merges_and_clips():
    assert normalized([(10, 5), (0, 4), (4, 2), (12, 10), (30, 0)], 20) == [(0, 6), (10, 20)]


def _assemble(size: int, writes, granule: int):
    """Feed writes to Granules; return (reassembled image, emitted runs)."""
    image = bytearray(size + granule)
    runs = []

    def emit(offset, data, start, end):
        assert offset % granule == 0 and (end - start) % granule == 0, (offset, start, end)
        chunk = bytes(memoryview(data)[start:end])
        for pos in range(0, len(chunk), granule):
            assert chunk[pos:pos + granule] != bytes(granule), "an all-zero granule was emitted"
        image[offset:offset + len(chunk)] = chunk
        runs.append((offset, len(chunk)))

    granules = Granules(granule, emit)
    for offset, data in writes:
        granules.write(offset, data)
    granules.finish()
    return bytes(image[:size]), runs


@pytest.mark.parametrize("seed", range(12))
def test_granules_rebuild_any_increasing_writes(seed):
    rng = random.Random(seed)
    granule = rng.choice([512, BLOCK, 64 << 10])
    size = rng.randrange(1, 3 * (1 << 20))
    expected = bytearray(size)
    writes, offset = [], 0
    while offset < size:
        offset += rng.choice([0, 0, 1, 100, granule, 3 * granule + 5, 70000])
        if offset >= size:
            break
        length = min(size - offset, rng.choice([1, 7, granule - 1, granule, 2 * granule + 3, 200000]))
        payload = bytes(length) if rng.random() < 0.2 else rng.randbytes(length)
        expected[offset:offset + length] = payload
        writes.append((offset, payload))
        offset += length
    image, runs = _assemble(size, writes, granule)
    assert image == bytes(expected)


def test_granules_skip_zero_granules_and_leave_holes():
    data = bytes(BLOCK) + b"\1" * BLOCK + bytes(3 * BLOCK) + b"\2"
    _image, runs = _assemble(len(data), [(0, data)], BLOCK)
    assert runs == [(BLOCK, BLOCK), (5 * BLOCK, BLOCK)]


def test_granules_emit_maximal_runs():
    """A zero stretch that fills no aligned granule does not cut a run; one that does, does."""
    data = b"\1" * 100 + bytes(BLOCK) + b"\2" * (2 * BLOCK - 100) + bytes(BLOCK) + b"\3"
    _image, runs = _assemble(len(data), [(0, data)], BLOCK)
    assert runs == [(0, 3 * BLOCK), (4 * BLOCK, BLOCK)]


@pytest.mark.parametrize("seed", range(6))
def test_zero_granules_match_their_definition(seed):
    from virtrbd.backup.granules import zero_granules
    rng = random.Random(seed)
    g = rng.choice([512, BLOCK])
    pieces = [rng.choice([bytes(g), b"\0" * (g - 1) + b"\1", b"\1" + bytes(g - 1), rng.randbytes(g)])
              for _ in range(200)]
    data = b"".join(pieces)
    expected = [i for i, piece in enumerate(pieces) if piece == bytes(g)]
    assert zero_granules(data, 0, len(data), g) == expected
    assert zero_granules(bytearray(data), g, len(data), g) == [i - 1 for i in expected if i]
    assert zero_granules(memoryview(data), 0, len(data), g) == expected


def test_granules_merge_partial_writes_into_one_granule():
    _image, runs = _assemble(BLOCK, [(0, b"a" * 100), (100, b"b" * 100), (4000, b"c" * 96)], BLOCK)
    assert runs == [(0, BLOCK)]


def test_granules_refuse_going_back():
    granules = Granules(BLOCK, lambda *a: None)
    granules.write(100, b"x")
    with pytest.raises(ValueError, match="in order"):
        granules.write(50, b"y")


class SlowSource:
    """Reads complete on other threads, later ones first; counts what is in flight."""

    def __init__(self, data: bytes, fail_at: int | None = None):
        self.data = data
        self.size = len(data)
        self.fail_at = fail_at
        self.in_flight = 0
        self.max_bytes = 0
        self._bytes = 0
        self._lock = threading.Lock()

    def submit_read(self, offset, length, done):
        with self._lock:
            self.in_flight += 1
            self._bytes += length
            self.max_bytes = max(self.max_bytes, self._bytes)

        def later():
            time.sleep(0.002 * (1 + (offset // length) % 3))
            with self._lock:
                self.in_flight -= 1
                self._bytes -= length
            if self.fail_at is not None and offset == self.fail_at:
                done(None, OSError(5, "injected"))
            else:
                done(self.data[offset:offset + length], None)
        threading.Thread(target=later).start()


def test_read_window_returns_jobs_in_order_within_the_bound():
    data = random.Random(1).randbytes(64 * 1024)
    source = SlowSource(data)
    window = ReadWindow(source.submit_read, window_bytes=8 * 1024, max_ops=4)
    jobs = [Job(key=i, ranges=[(i * 1024, 1024)]) for i in range(64)]
    out = [(job.key, job.results[0]) for job in window.run(jobs)]
    assert [k for k, _ in out] == list(range(64))
    assert b"".join(d for _, d in out) == data
    assert source.max_bytes <= 8 * 1024


def test_read_window_raises_the_failure_and_waits_for_reads_in_flight():
    source = SlowSource(bytes(64 * 1024), fail_at=10 * 1024)
    window = ReadWindow(source.submit_read, window_bytes=16 * 1024, max_ops=8)
    with pytest.raises(OSError, match="injected"):
        for _ in window.run(Job(key=i, ranges=[(i * 1024, 1024)]) for i in range(64)):
            pass
    assert source.in_flight == 0


def test_read_window_detects_short_reads():
    window = ReadWindow(lambda o, n, done: done(b"x" * (n - 1), None))
    with pytest.raises(IOError, match="short read"):
        list(window.run([Job(key=0, ranges=[(0, 10)])]))


def test_read_chunks_give_full_content_of_allocated_chunks_only():
    size = 5 * CHUNK + 3
    content, extents = scattered(size, seed=3, count=6, sizes=(4096, 100))
    extents.append((size - 1, 1))
    source = MemorySource(content, extents)
    chunks = list(read_chunks(source, size, window_bytes=2 * CHUNK, max_ops=3))
    expected_indices = sorted({o // CHUNK for s, e in source.map for o in range(s, e, 4096)} |
                              {(e - 1) // CHUNK for s, e in source.map})
    assert [c.index for c in chunks] == expected_indices
    for chunk in chunks:
        assert bytes(chunk.data) == source.data[chunk.offset:chunk.offset + chunk.length]
        for start, end in chunk.extents:
            assert chunk.offset <= start < end <= chunk.offset + chunk.length
    assert chunks[-1].length == 3


def test_memory_source_reads_zeros_outside_its_map():
    source = MemorySource(b"abcdef", [(1, 2)])
    assert source.data == b"\0bc\0\0\0"


def test_memory_sink_clips_at_its_size():
    sink = MemorySink(4)
    sink.write(2, b"xyz")
    assert bytes(sink.data) == b"\0\0xy"


def test_a_wait_for_a_slow_read_notices_cancellation():
    event = threading.Event()

    def submit(offset, length, done):
        if offset == 0:
            threading.Timer(1.0, lambda: done(bytes(length), None)).start()   # slow, completes later
        else:
            done(bytes(length), None)

    threading.Timer(0.1, event.set).start()
    window = ReadWindow(submit, window_bytes=1 << 20, max_ops=4)
    started = time.monotonic()
    with pytest.raises(Cancelled), cancellable(event):
        list(window.run([Job(key=i, ranges=[(i * 10, 10)]) for i in range(3)]))
    assert time.monotonic() - started < 2          # noticed within a poll, then waited for the read in flight


def _runs_by_hand(data: bytes, gap: int) -> list[tuple[int, int]]:
    """The definition, byte by byte: non-zero runs, zero stretches shorter than ``gap`` inside them."""
    runs, i, n = [], 0, len(data)
    while i < n:
        while i < n and data[i] == 0:
            i += 1
        if i >= n:
            break
        start, last, j = i, i, i
        while j < n:
            if data[j]:
                last, j = j, j + 1
                continue
            k = j
            while k < n and data[k] == 0:
                k += 1
            if k - j >= gap or k >= n:
                break
            j = k
        runs.append((start, last + 1))
        i = last + 1
    return runs


def test_nonzero_runs_match_their_definition():
    import random

    from virtrbd.backup.stream import nonzero_runs
    rng = random.Random(7)
    for _ in range(1500):
        data = bytearray(rng.randint(0, 3000))
        for _ in range(rng.randint(0, 6)):
            at = rng.randint(0, len(data))
            for x in range(at, min(len(data), at + rng.randint(0, 400))):
                data[x] = rng.randint(0, 255)
        data = bytes(data)
        assert list(nonzero_runs(data, gap=64)) == _runs_by_hand(data, 64)
        if len(data) > 200:   # a window of the buffer: offsets stay the buffer's own
            inner = _runs_by_hand(data[100:len(data) - 100], 64)
            assert list(nonzero_runs(data, 100, len(data) - 100, gap=64)) == [(a + 100, b + 100) for a, b in inner]


def test_nonzero_runs_of_empty_and_full_buffers():
    from virtrbd.backup.stream import nonzero_runs
    assert list(nonzero_runs(bytes(1 << 20))) == []
    assert list(nonzero_runs(b"\x01" * 4096)) == [(0, 4096)]
    assert list(nonzero_runs(bytearray(b"\0\0ab\0\0"))) == [(2, 4)]
