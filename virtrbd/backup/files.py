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

Writing is ``block_writer``'s: an ``AtomicFile`` gives it the descriptor.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

from .. import exits
from ..errors import BackupError, CorruptBackupError
from .stream import MiB

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
