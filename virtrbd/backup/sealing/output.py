"""Where an age file's bytes go: through the page cache, or past it in aligned blocks as clear backups go.

Sealed chunks are 64 KiB and 16 bytes, so an age file's chunks never line up
with the disk's blocks.  ``DirectOutput`` takes the bytes in file order past an
aligned edge, gathers them into whole 4 KiB blocks and hands those to a
``BlockWriter`` with O_DIRECT, as a clear QCOW2 backup is written; what lies
before the edge (the header, the first chunk, the start of the second) and the
last partial block go through a buffered twin of the descriptor.  The two never
share a page.  ``CachedOutput`` writes through the page cache and starts the
disk's writeback every 16 MiB, where O_DIRECT is not to be had.
"""

from __future__ import annotations

import os

from ..block_writer import BlockWriter, buffered_twin
from ..stream import BLOCK, MiB

#: the writeback of a cached output starts every this many bytes (the fsync would otherwise write it all)
WRITEBACK = 16 * MiB
#: gathered bytes go to the block writer in runs of at least this much
RUN = 1 * MiB


def pwrite_all(fd: int, pieces: list, at: int) -> None:
    """``pieces`` written one after the other from ``at``, whatever the kernel takes per call."""
    end = at + sum(len(piece) for piece in pieces)
    written = os.pwritev(fd, pieces, at)
    if written < end - at:
        view = memoryview(b"".join(pieces))[written:]
        while view:
            view = view[os.pwrite(fd, view, end - len(view)):]


class CachedOutput:
    """Writes through the page cache; ``rest_from`` is where the bytes written in order begin."""

    def __init__(self, fd: int, rest_from: int):
        self.fd, self.flushed = fd, rest_from

    def write(self, at: int, pieces: list) -> None:
        pwrite_all(self.fd, pieces, at)
        end = at + sum(len(piece) for piece in pieces)
        if end - self.flushed >= WRITEBACK:
            os.posix_fadvise(self.fd, self.flushed, end - self.flushed, os.POSIX_FADV_DONTNEED)
            self.flushed = end

    def finish(self) -> None:
        """Everything is written (the file's fsync is its owner's)."""

    def close(self) -> None:
        """Nothing to stop."""


class DirectOutput:
    """O_DIRECT in aligned blocks from the first block boundary at or after ``rest_from``, where bytes come
    in file order; before it, and the last partial block, through a buffered twin of ``fd``."""

    def __init__(self, fd: int, rest_from: int):
        twin = buffered_twin(fd)
        if twin is None:
            raise OSError("no buffered descriptor beside an O_DIRECT one (/proc not mounted?)")
        self.buffered = twin
        self.edge = -(-rest_from // BLOCK) * BLOCK
        self.blocks = BlockWriter(fd, direct=True, buffers=2, threads=1)
        self.gathered = bytearray()
        self.gathered_at = self.edge        # the file offset of gathered[0]

    def write(self, at: int, pieces: list) -> None:
        for piece in pieces:
            if at < self.edge:
                before = min(len(piece), self.edge - at)
                pwrite_all(self.buffered, [piece[:before]], at)
                piece, at = piece[before:], at + before
            if piece:
                if at != self.gathered_at + len(self.gathered):
                    raise ValueError(f"an age file's bytes at {at} after {self.gathered_at + len(self.gathered)}: "
                                     f"past its first chunk they come in order")
                self.gathered += piece
                at += len(piece)
        if len(self.gathered) >= RUN:
            self._hand_over()

    def _hand_over(self) -> None:
        whole = len(self.gathered) // BLOCK * BLOCK
        if whole:
            self.blocks.pwrite(self.gathered_at, self.gathered, 0, whole)
            del self.gathered[:whole]
            self.gathered_at += whole

    def finish(self) -> None:
        self._hand_over()
        self.blocks.flush()
        if self.gathered:
            pwrite_all(self.buffered, [bytes(self.gathered)], self.gathered_at)
            self.gathered_at += len(self.gathered)
            self.gathered.clear()

    def close(self) -> None:
        self.blocks.close()
        if self.buffered >= 0:
            os.close(self.buffered)
            self.buffered = -1
