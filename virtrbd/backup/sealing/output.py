"""Where an age file's bytes go: through the page cache, or past it in aligned blocks as clear backups go.

Sealed chunks are 64 KiB and 16 bytes, so an age file's chunks never line up
with the disk's blocks.  ``DirectOutput`` takes the bytes in file order past an
aligned edge and hands whole 4 KiB blocks of them to a ``BlockWriter`` with
O_DIRECT, as a clear QCOW2 backup is written: the aligned middle of each write
goes over as it is (the block writer's copy is the only one), the few bytes
either side wait in a block of their own until it is whole.  What lies before
the edge (the header, the first chunk, the start of the second) and the last
partial block go through a buffered twin of the descriptor; the two never share
a page.  ``CachedOutput`` writes through the page cache and starts the disk's
writeback every 16 MiB, where O_DIRECT is not to be had.
"""

from __future__ import annotations

import os

from ..block_writer import BlockWriter, buffered_twin
from ..stream import BLOCK, MiB

#: the writeback of a cached output starts every this many bytes (the fsync would otherwise write it all)
WRITEBACK = 16 * MiB


def pwrite_all(fd: int, data, at: int) -> None:
    """``data`` written at ``at``, whatever the kernel takes per call."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, at)
        view, at = view[written:], at + written


class CachedOutput:
    """Writes through the page cache; ``rest_from`` is where the bytes written in order begin."""

    def __init__(self, fd: int, rest_from: int):
        self.fd, self.flushed = fd, rest_from

    def write(self, at: int, data) -> None:
        pwrite_all(self.fd, data, at)
        end = at + len(data)
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
        # the file's checksum is of the plaintext (``SealedBlocks.crc``): none of the ciphertext here
        self.blocks = BlockWriter(fd, direct=True, buffers=2, threads=1, checksum=False)
        self.partial = bytearray()          # bytes of the block at ``block_at``, not whole yet
        self.block_at = self.edge

    def write(self, at: int, data) -> None:
        view = memoryview(data)
        if at < self.edge:
            before = min(len(view), self.edge - at)
            pwrite_all(self.buffered, view[:before], at)
            view, at = view[before:], at + before
        if not view:
            return
        if at != self.block_at + len(self.partial):
            raise ValueError(f"an age file's bytes at {at} after {self.block_at + len(self.partial)}: "
                             f"past its first chunk they come in order")
        if self.partial:
            take = min(len(view), BLOCK - len(self.partial))
            self.partial += view[:take]
            view = view[take:]
            if len(self.partial) < BLOCK:
                return
            self.blocks.pwrite(self.block_at, self.partial)
            self.block_at += BLOCK
            self.partial = bytearray()
        whole = len(view) // BLOCK * BLOCK
        if whole:
            self.blocks.pwrite(self.block_at, view, 0, whole)
            self.block_at += whole
        self.partial += view[whole:]

    def finish(self) -> None:
        self.blocks.flush()
        if self.partial:
            pwrite_all(self.buffered, self.partial, self.block_at)
            self.block_at += len(self.partial)
            self.partial = bytearray()

    def close(self) -> None:
        self.blocks.close()
        if self.buffered >= 0:
            os.close(self.buffered)
            self.buffered = -1
