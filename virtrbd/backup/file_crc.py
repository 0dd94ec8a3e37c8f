"""The CRC-32C of a backup file's bytes as written: what ``verify`` checks of the file itself.

The content checksum says whether a file still holds the image; this one says
whether it is still the file virtrbd wrote, byte for byte, including the
structure a reader such as QEMU's also parses (headers, tables, the zeros of a
hole).  The bytes pass through the writer anyway and CRC-32C runs in hardware,
so it costs little; a hole costs no reading at all, because appending n zero
bytes to a CRC is a multiplication by x^(8n) modulo the polynomial, done in
about log2(n) steps.  Writes may arrive out of order (a QCOW2 header is written
last, at offset 0): each run of consecutive writes keeps its own CRC, and the
runs are joined in file order at the end (``crc(A+B) = crc(A)·x^(8|B|) ⊕ crc(B)``).

Bits are reflected as in every CRC-32C: the value's top bit is x^0.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .. import crc32c

ALGORITHM = "crc32c"
_POLY = 0x82F63B78          # Castagnoli, reflected
_TOP = 1 << 31              # x^0


def _multiply(a: int, b: int) -> int:
    """a·b modulo the polynomial, both reflected."""
    product = 0
    mask = _TOP
    while mask:
        if a & mask:
            product ^= b
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
        mask >>= 1
    return product


def _powers() -> list[int]:
    """x^(2^k) for k = 0..63."""
    table = [_TOP >> 1]                       # x^1
    for _ in range(63):
        table.append(_multiply(table[-1], table[-1]))
    return table


_X_2K = _powers()


@functools.lru_cache(maxsize=4096)     # a sparse RAW file has thousands of holes, of few distinct lengths
def _x_to_8n(n: int) -> int:
    """x^(8n) modulo the polynomial: appending n zero bytes to a CRC register."""
    result, k, exponent = _TOP, 0, 8 * n
    while exponent:
        if exponent & 1:
            result = _multiply(_X_2K[k], result)
        exponent >>= 1
        k += 1
    return result


def combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32C of A followed by B, from the CRC of each and B's length."""
    return _multiply(_x_to_8n(length_b), crc_a) ^ crc_b if length_b else crc_a


@functools.lru_cache(maxsize=4096)
def of_zeros(length: int) -> int:
    """The CRC-32C of ``length`` zero bytes, without touching them."""
    return combine(0xFFFFFFFF, 0, length) ^ 0xFFFFFFFF if length else 0


def extend_zeros(crc: int, length: int) -> int:
    return combine(crc, of_zeros(length), length)


@dataclass
class _Run:
    start: int
    end: int
    crc: int


class FileCRC:
    """Collects the writes of a file (never overlapping) and gives the CRC-32C of the whole file."""

    def __init__(self) -> None:
        self._runs: list[_Run] = []
        self.end = 0                            # where the writes so far end (the next offset of a stream)
        #: where the file will end, when a writer pads its last block and then truncates (None: unknown)
        self.limit: int | None = None

    def add(self, offset: int, data) -> None:
        if self.limit is not None and offset + len(data) > self.limit:
            data = memoryview(data)[:max(0, self.limit - offset)]
        length = len(data)
        if not length:
            return
        last = self._runs[-1] if self._runs else None
        if last is not None and offset >= last.end == self.end:   # the usual case: in file order, perhaps after a hole
            last.crc = crc32c.extend(extend_zeros(last.crc, offset - last.end), data)
            last.end = offset + length
        else:
            self._runs.append(_Run(offset, offset + length, crc32c.value(data)))
        self.end = max(self.end, offset + length)

    def value(self, file_size: int) -> str:
        """The CRC of ``file_size`` bytes: the writes, zeros wherever nothing was written."""
        crc, at = 0, 0
        for run in sorted(self._runs, key=lambda r: r.start):
            if run.start < at or run.end > file_size:
                raise ValueError(f"writes overlap or pass the end of the file at {run.start}")
            crc = combine(extend_zeros(crc, run.start - at), run.crc, run.end - run.start)
            at = run.end
        return f"{extend_zeros(crc, file_size - at):08x}"


def of_file(fd: int, size: int, block: int = 4 << 20, will_need=lambda fd, offset, length: None) -> str:
    """The CRC-32C of an open file's first ``size`` bytes, reading only where it holds data.

    ``will_need(fd, offset, length)`` is told of the next block of data before each read (a reader
    without the kernel's read-ahead starts it: ``read_ahead.will_need``)."""
    crc, at = 0, 0
    while at < size:
        try:
            data_at = min(os.lseek(fd, at, os.SEEK_DATA), size)
        except OSError:                         # ENXIO: only a hole until the end
            data_at = size
        crc = extend_zeros(crc, data_at - at)
        if data_at >= size:
            break
        hole_at = min(os.lseek(fd, data_at, os.SEEK_HOLE), size)
        at = data_at
        while at < hole_at:
            length = min(block, hole_at - at)
            will_need(fd, at + length, min(block, hole_at - at - length))
            data = os.pread(fd, length, at)
            if not data:
                raise EOFError(f"the file ends at {at} bytes, {size} expected")
            crc = crc32c.extend(crc, data)
            at += len(data)
    return f"{crc:08x}"
