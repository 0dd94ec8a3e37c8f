"""Writes cut into whole, aligned granules, of which only those holding a non-zero byte come out.

Writes arrive in increasing offset order; granules are 4 KiB blocks for a sparse
RAW file and clusters for QCOW2.  Comparing in place (``bytes.startswith``, see
``stream.is_zero``) keeps this cheap enough to run on every byte of a backup.
"""

from __future__ import annotations

from collections.abc import Callable

from .stream import is_zero, zeros

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
            at = offset - granule_at
            memoryview(self._pending)[at:at + take] = memoryview(data)[start:start + take]
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
            memoryview(self._pending)[:length] = memoryview(data)[start:start + length]

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
    few candidates in real data (1 in 65536 granules of random data).  Each
    stretch of consecutive candidates is then compared whole, once: in a
    read that is mostly a hole that is one comparison for the hole, not one
    per granule; a stretch that is not all zeros has its granules compared
    one by one.  A byte-by-byte search for zero runs costs a full pass over
    the data instead.
    """
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(memoryview(data)[start:end])
        start, end = 0, len(data)
    heads = data[start:end:granule]
    tails = data[start + granule - 1:end:granule]
    empty = zeros(granule)
    found: list[int] = []
    first = heads.find(0)
    while first >= 0:
        stop = len(heads) - len(heads[first:].lstrip(b"\0"))       # the stretch of zero heads
        stretch = tails[first:stop]
        if not stretch.strip(b"\0") and data.startswith(zeros((stop - first) * granule), start + first * granule):
            found.extend(range(first, stop))
        else:
            found.extend(i for i in range(first, stop)
                         if tails[i] == 0 and data.startswith(empty, start + i * granule))
        first = heads.find(0, stop)
    return found
