"""Writing a backup file fast and with bounded memory, past the page cache where the filesystem allows.

``BlockWriter`` writes through ``O_DIRECT`` when the filesystem allows
it: a multi-gigabyte backup then neither evicts the hypervisor's page cache nor
pays for filling it.  Data are copied into a few page-aligned buffers (reused,
so memory stays bounded) and written by one or two threads while the caller
goes on reading and hashing (two keep a write in flight while another waits
for the device).  Filesystems that refuse ``O_DIRECT`` (tmpfs, some FUSE)
get plain writes followed by ``posix_fadvise(DONTNEED)``.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
from typing import Protocol

from ..errors import BackupError
from .file_crc import FileCRC
from .stream import BLOCK, POLL, KiB, MiB, check_cancel

#: a run shorter than this is written through the page cache, not with O_DIRECT: a scattered image's
#: many small runs would otherwise each wait for the disk (the fsync before publishing writes them all)
SMALL_RUN = 256 * KiB


def buffered_twin(fd: int) -> int | None:
    """A second, buffered descriptor of the file open as ``fd`` (None where /proc is not there)."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Blocks(Protocol):
    """What the format writers write through: ``BlockWriter``, or ``sealing.plain.SealedBlocks``."""

    crc: FileCRC

    def pwrite(self, offset: int, data, start: int = 0, end: int | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class BlockWriter:
    """Positional writes through reused page-aligned buffers and writer threads.

    ``pwrite(offset, data, start, end)`` copies ``data[start:end]`` into the
    current buffer, as a continuation of the previous run when it continues it
    in the file (so contiguous runs leave as one large write) or as a run of
    its own; a full buffer goes to a thread, which writes its runs.  With
    ``direct`` every offset and length must be a multiple of 4 KiB.  Writes to
    different places may land in any order (they never overlap: each run
    covers its own range).  Errors in a thread come back on
    the next call.  Memory: ``buffers`` x ``buffer_size``, whatever the file size.
    With ``direct``, runs shorter than ``SMALL_RUN`` go through a second,
    buffered descriptor (the page cache takes them; the file's fsync writes
    them out together, in order) instead of one disk write each.
    ``crc`` sees every byte written, for the manifest's ``file_checksum`` (unless ``checksum`` is False:
    an encrypted file's checksum is of its plaintext).
    """

    def __init__(self, fd: int, *, direct: bool, buffer_size: int = 4 * MiB, buffers: int = 2, threads: int = 1,
                 checksum: bool = True):
        self.fd = fd
        self.direct = direct
        self._buffered_fd = buffered_twin(fd) if direct else None
        self.buffer_size = buffer_size
        self.bytes_written = 0
        self.crc = FileCRC()
        self._checksum = checksum
        self._count_lock = threading.Lock()
        self._free: queue.Queue = queue.Queue()
        for _ in range(buffers):
            self._free.put(mmap.mmap(-1, buffer_size))
        self._work: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._current: mmap.mmap | None = None
        self._current_len = 0         # bytes of the current buffer in use
        #: the current buffer's runs: [file offset, offset in the buffer, length], in the order written
        self._runs: list[list[int]] = []
        self._threads = [threading.Thread(target=self._run, name=f"backup-writer-{n}", daemon=True)
                         for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def pwrite(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        if self.direct and (offset % BLOCK or (end - start) % BLOCK):
            raise ValueError(f"unaligned direct write at {offset} of {end - start} bytes")
        view = memoryview(data)
        whole = start == 0 and end == len(data) and isinstance(data, bytes)
        if self._checksum:
            self.crc.add(offset, data if whole else view[start:end])
        while start < end:
            self._check()
            if self._current is None or self._current_len == self.buffer_size:
                self._hand_over()
                self._current = self._take_free()
            take = min(end - start, self.buffer_size - self._current_len)
            self._current[self._current_len:self._current_len + take] = view[start:start + take]
            last = self._runs[-1] if self._runs else None
            if last is not None and offset == last[0] + last[2]:
                last[2] += take                              # continues the run before it
            else:
                self._runs.append([offset, self._current_len, take])
            self._current_len += take
            offset += take
            start += take

    def flush(self) -> None:
        """Every write so far is in the file (not yet synced); raises the writer's error if any."""
        self._hand_over()
        with self._work.all_tasks_done:
            while self._work.unfinished_tasks:
                self._work.all_tasks_done.wait(POLL)
                check_cancel()
        self._check()

    def close(self) -> None:
        """Stop the threads (after the writes queued so far).  Safe to call twice."""
        if any(thread.is_alive() for thread in self._threads):
            self._hand_over()
            for _ in self._threads:
                self._work.put(None)
            for thread in self._threads:
                thread.join()
        for buf in self._drain_free():
            buf.close()
        if self._buffered_fd is not None:
            os.close(self._buffered_fd)
            self._buffered_fd = None

    def _drain_free(self):
        while True:
            try:
                yield self._free.get_nowait()
            except queue.Empty:
                return

    def _take_free(self) -> mmap.mmap:
        while True:
            try:
                return self._free.get(timeout=POLL)
            except queue.Empty:
                check_cancel()
                self._check()
                if not any(thread.is_alive() for thread in self._threads):
                    raise BackupError("the backup writer threads stopped") from None

    def _hand_over(self) -> None:
        if self._current is not None:
            if self._current_len:
                self._work.put((self._current, self._runs))
            else:
                self._free.put(self._current)
            self._current, self._current_len, self._runs = None, 0, []

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, OSError):
                raise BackupError(f"writing the backup file: {error.strerror or error}") from None
            raise error

    def _run(self) -> None:
        while True:
            item = self._work.get()
            try:
                if item is None:
                    return
                buf, runs = item
                try:
                    for offset, at, length in runs:
                        if self._error is None:
                            fd = self.fd if length >= SMALL_RUN or self._buffered_fd is None else self._buffered_fd
                            self._write_all(buf, at, offset, length, fd)
                except BaseException as exc:  # handed to the caller on its next call
                    self._error = exc
                finally:
                    self._free.put(buf)
            finally:
                self._work.task_done()

    def _write_all(self, buf: mmap.mmap, at: int, offset: int, length: int, fd: int) -> None:
        """``length`` bytes from ``at`` in ``buf`` to the file at ``offset``."""
        view = memoryview(buf)[at:at + length]
        try:
            done = 0
            while done < length:
                written = os.pwrite(fd, view[done:length], offset + done)
                if written <= 0:
                    raise OSError(errno.EIO, "short write")
                done += written
            with self._count_lock:
                self.bytes_written += length
        finally:
            view.release()
