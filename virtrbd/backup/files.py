"""Backup files on secondary storage: written under a temporary name, synced, then published atomically.

Naming.  While it is written a file is ``.<final name>.virtrbd-tmp-<host>-<pid>``
in the destination directory (hidden, never mistaken for a backup).  Publishing
is ``link(temp, final)`` (which refuses to replace an existing file) then
``unlink(temp)`` and an fsync of the directory; where hard links are not
supported, ``rename`` after a check.  A process killed mid-way leaves only its
temp file: the next backup into that directory removes temp files whose
process, on this host, is gone (``remove_stale_temps``).

Modes.  Every file is created 0600: a backup holds a VM's data.

Reading.  Secondary storage is a share other machines write to, so anything
may stand where a backup or a manifest should: a FIFO (whose open blocks until
a writer comes), a device (``/dev/zero`` never ends), a directory, a socket.
``open_regular`` opens without blocking and judges the descriptor it got, not
the name (which may change in between), so only a regular file — directly or
through a symlink — is ever read.

Writing.  ``BlockWriter`` writes through ``O_DIRECT`` when the filesystem allows
it: a multi-gigabyte backup then neither evicts the hypervisor's page cache nor
pays for filling it.  Data are copied into a few page-aligned buffers (reused,
so memory stays bounded) and written by one or two threads while the caller
goes on reading and hashing (two keep a write in flight while another waits
for the device).  Filesystems that refuse ``O_DIRECT`` (tmpfs, some FUSE)
get plain writes followed by ``posix_fadvise(DONTNEED)``.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import queue
import socket
import stat
import threading
from pathlib import Path
from typing import Protocol

from .. import exits
from ..errors import BackupError, CorruptBackupError
from .file_crc import FileCRC
from .stream import BLOCK, POLL, KiB, MiB, check_cancel

log = logging.getLogger(__name__)

TEMP_MARK = ".virtrbd-tmp-"
#: between a backup file's name and POOL~IMAGE in the marker of an instant restore that reads it (in_use)
INSTANT_MARK = ".instant."
FILE_MODE = 0o600


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: os.PathLike | str, what: str = "backup file") -> int:
    """A read-only descriptor of ``path``, which must be a regular file (a symlink may lead to one).

    ``O_NONBLOCK`` keeps the open of a FIFO from waiting for a writer, and the
    type is judged on the open descriptor; the flag is then cleared, so reads of
    a file on a share still wait for the server as they should.  Missing files
    raise ``FileNotFoundError``; anything else that is not a readable regular
    file is a one-line ``CorruptBackupError`` naming what stands there.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        try:
            kind = _kind(os.stat(path).st_mode)
        except OSError:
            kind = (exc.strerror or str(exc)).lower()
        raise CorruptBackupError(f"{path}: cannot read the {what}: {kind}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CorruptBackupError(f"{path}: the {what} is {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)
    return fd


def open_regular_stream(path: os.PathLike | str, what: str = "backup file", buffering: int = 1 * MiB):
    """``open_regular`` as a buffered binary stream."""
    return os.fdopen(open_regular(path, what), "rb", buffering=buffering)


def regular_size(path: os.PathLike | str, what: str = "backup file") -> int:
    """The size of the regular file at ``path`` (``FileNotFoundError`` when it is missing)."""
    fd = open_regular(path, what)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_") or "host"


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARK}{_host()}-{os.getpid()}")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie is gone too (PID 1 in containers may reap slowly)
        status = Path(f"/proc/{pid}/status").read_text()
        return "\nState:\tZ" in status
    except OSError:
        return False


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove temp files left in ``directory`` by backups on this host whose process is gone."""
    removed: list[Path] = []
    prefix = f"{TEMP_MARK}{_host()}-"
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or prefix not in name:
            continue
        pid_text = name.rpartition("-")[2]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or not _process_gone(int(pid_text)):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
            log.info("removed %s, left by an interrupted backup", entry.path)
        except OSError as exc:
            log.debug("cannot remove %s: %s", entry.path, exc)
    return removed


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some network filesystems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def publish(temp: Path, final: Path) -> None:
    """Give ``temp`` its final name without ever replacing an existing file."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise BackupError(f"{final}: exists already") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if final.exists():
            raise BackupError(f"{final}: exists already") from None
        os.rename(temp, final)
        return
    os.unlink(temp)


class AtomicFile:
    """A file under a temporary name until ``commit``; removed on ``abort`` or any exception."""

    def __init__(self, final: Path, *, direct: bool = False):
        self.final = final
        self.temp = temp_name(final)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self.direct = False
        try:
            if direct and hasattr(os, "O_DIRECT"):
                try:
                    self.fd = os.open(self.temp, flags | os.O_DIRECT, FILE_MODE)
                    self.direct = True
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.fd = os.open(self.temp, flags, FILE_MODE)
            else:
                self.fd = os.open(self.temp, flags, FILE_MODE)
        except OSError as exc:
            raise BackupError(f"{self.temp}: cannot create ({(exc.strerror or str(exc)).lower()})") from None
        os.fchmod(self.fd, FILE_MODE)      # whatever the umask
        self._open = True
        self._exit_token = exits.remove_at_forced_exit(self.temp)

    def sync(self) -> None:
        os.fsync(self.fd)

    def commit(self) -> None:
        """fsync, close, then publish under the final name."""
        os.fsync(self.fd)
        if not self.direct:
            _drop_cache(self.fd)
        self._close()
        publish(self.temp, self.final)
        exits.forget(self._exit_token)

    def abort(self) -> None:
        self._close()
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass
        exits.forget(self._exit_token)

    def _close(self) -> None:
        if self._open:
            self._open = False
            os.close(self.fd)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.abort()        # a block that neither committed nor failed publishes nothing


def _drop_cache(fd: int) -> None:
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


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
    ``crc`` sees every byte written, for the manifest's ``file_checksum``.
    """

    def __init__(self, fd: int, *, direct: bool, buffer_size: int = 4 * MiB, buffers: int = 2, threads: int = 1):
        self.fd = fd
        self.direct = direct
        self._buffered_fd = buffered_twin(fd) if direct else None
        self.buffer_size = buffer_size
        self.bytes_written = 0
        self.crc = FileCRC()
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
