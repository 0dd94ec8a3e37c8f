"""An initramfs as the kernel reads it: a gzip-compressed cpio archive in the "newc" format.

Written here rather than by the ``cpio`` tool so that building the guest kit
needs nothing on the host beyond Debian's own packages of the guest: the format
is a 110-byte ASCII header per entry (magic ``070701``, thirteen 8-digit hex
fields), the name with its NUL, the data, each padded to four bytes, and a
``TRAILER!!!`` entry at the end.  Device nodes are only records in the archive,
so ``/dev/console`` needs no privilege to make.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One file, directory, symlink or device node of the archive."""

    path: str                   # without a leading '/'
    mode: int                   # type and permission bits, as in st_mode
    data: bytes = b""           # a file's content, or a symlink's target
    rdev: tuple[int, int] = (0, 0)


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def file(path: str, data: bytes, mode: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFREG | mode, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int) -> Entry:
    return Entry(path, stat.S_IFCHR | 0o600, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _record(ino: int, entry: Entry) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    return header + name + _pad(len(header) + len(name)) + entry.data + _pad(len(entry.data))


def archive(entries: list[Entry]) -> bytes:
    """The uncompressed archive; every directory an entry lives in must come before it."""
    parts = [_record(ino, entry) for ino, entry in enumerate(entries, start=1)]
    parts.append(_record(0, Entry(TRAILER, 0)))
    return b"".join(parts)


def initramfs(entries: list[Entry]) -> bytes:
    """The gzip-compressed archive the kernel unpacks as its first root filesystem."""
    return gzip.compress(archive(entries), compresslevel=6, mtime=0)
