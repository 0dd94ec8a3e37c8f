"""RAW backups: a sparse file of exactly the image's size.

Writing: only the 4 KiB blocks that hold a non-zero byte are written; the rest
stays a hole (``ftruncate`` gives the file its size up front and again at the
end, trimming the padding of a last partial block).  Reading: ``SEEK_DATA`` /
``SEEK_HOLE`` find the data, so a mostly empty file costs almost nothing to
restore or verify; a filesystem without them is read in full.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Iterator

from ...errors import CorruptBackupError
from ..block_writer import BlockWriter
from ..files import open_regular
from ..granules import Granules
from ..read_ahead import will_need, without_read_ahead
from ..stream import BLOCK, CHUNK


class RawWriter:
    """Writes in increasing offset order; zero blocks are skipped."""

    def __init__(self, out: BlockWriter, size: int):
        self.out = out
        self.size = size
        os.ftruncate(out.fd, size)
        out.crc.limit = size                      # the last block's padding is cut off by finish()
        self._granules = Granules(BLOCK, self._emit)

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        if offset + (end - start) > self.size:
            raise ValueError(f"write at {offset} of {end - start} bytes beyond the image size {self.size}")
        self._granules.write(offset, data, start, end)

    def _emit(self, offset: int, data, start: int, end: int) -> None:
        self.out.pwrite(offset, data, start, end)

    def finish(self) -> None:
        self._granules.finish()
        self.out.flush()
        os.ftruncate(self.out.fd, self.size)     # the last block may have been padded past the end


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of the file's data regions (SEEK_DATA/SEEK_HOLE), or the whole file."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:       # only a hole remains
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield offset, size - offset
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start
        offset = end


class RawReader:
    """A RAW file read chunk by chunk; chunks that lie in holes are never read."""

    def __init__(self, path: os.PathLike, expected_size: int | None = None):
        self.path = path
        self.fd = open_regular(path)
        self.size = os.fstat(self.fd).st_size
        if expected_size is not None and self.size != expected_size:
            self.close()
            kind = "truncated" if self.size < expected_size else "longer than recorded"
            raise CorruptBackupError(f"{path}: {kind}: {self.size} bytes, the manifest says {expected_size}")
        without_read_ahead(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RawReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chunks(self, chunk_size: int = CHUNK, ahead: int = 2) -> Iterator[tuple[int, list[tuple[int, bytes]]]]:
        """``(offset, parts)`` for each chunk holding data: ``parts`` are the file's data regions in it,
        ``(offset, bytes)``; the chunk's other bytes are holes (zeros), never read.

        A reader thread keeps up to ``ahead`` chunks read in advance (``pread``
        lets the interpreter go while it waits), and asks the kernel for the
        next chunk's data while it reads one (the kernel's own read-ahead is
        off: it would read the holes too, see ``read_ahead``); reads would
        otherwise wait on the disk one after the other while nothing else
        happens.
        """
        chunks: queue.Queue = queue.Queue(maxsize=ahead)
        stop = threading.Event()

        def read_ahead() -> None:
            try:
                layout = self._layout(chunk_size)
                following = next(layout, None)
                while following is not None:
                    first, _chunk_end, inside = following
                    following = next(layout, None)
                    for start, end in following[2] if following is not None else ():
                        will_need(self.fd, start, end - start)
                    item = (first, [(start, self._read(start, end - start)) for start, end in inside])
                    while not stop.is_set():
                        try:
                            chunks.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                chunks.put(None)
            except BaseException as exc:      # handed to the consumer, raised there
                chunks.put(exc)

        reader = threading.Thread(target=read_ahead, name="virtrbd-raw-read", daemon=True)
        reader.start()
        try:
            while True:
                item = chunks.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while reader.is_alive():          # unblock a reader waiting on a full queue
                try:
                    chunks.get_nowait()
                except queue.Empty:
                    reader.join(0.05)

    def _layout(self, chunk_size: int) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
        """``(first, end, extents)`` of each chunk that holds data, from the file's data/hole map."""
        extents = data_extents(self.fd, self.size)
        current = next(extents, None)
        while current is not None:
            first = current[0] - current[0] % chunk_size
            chunk_end = min(first + chunk_size, self.size)
            inside = []
            while current is not None and current[0] < chunk_end:
                start, length = current
                end = start + length
                inside.append((max(start, first), min(end, chunk_end)))
                if end > chunk_end:
                    current = (chunk_end, end - chunk_end)
                    break
                current = next(extents, None)
            yield first, chunk_end, inside

    def _read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise CorruptBackupError(f"{self.path}: truncated at {offset + len(data)} (read while restoring)")
        return data
