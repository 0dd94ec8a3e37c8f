"""What the backup formats read and write: a file's own bytes, or the plaintext its age encryption hides.

The QCOW2 and rbd-diff readers ask for bytes at offsets (``PlainFile``) or
in order (``plain_stream``), the writers hand them over at offsets
(``SealedBlocks``), and none of them knows whether the file is encrypted.
Only an encrypted file loads the cryptography (``age``, ``evp``).
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from ..file_crc import FileCRC
from ..files import open_regular

if TYPE_CHECKING:
    from .keys import Identity, Recipient
    from .opened import OpenedFile

FORMAT = "age-encryption.org/v1"


class PlainFile:
    """A backup file for reading: ``pread``/``readinto`` at offsets of its plaintext, ``size`` bytes."""

    def __init__(self, path: os.PathLike | str, identities: list[Identity] | None = None,
                 what: str = "backup file"):
        self.fd = open_regular(path, what)
        try:
            self._opened: OpenedFile | None = None
            if identities is not None:
                from .opened import OpenedFile
                self._opened = OpenedFile(self.fd, identities, str(path))
            self.size = self._opened.size if self._opened else os.fstat(self.fd).st_size
        except BaseException:
            os.close(self.fd)
            raise

    def pread(self, length: int, offset: int) -> bytes:
        return self._opened.pread(length, offset) if self._opened else os.pread(self.fd, length, offset)

    def readinto(self, view: memoryview, offset: int) -> int:
        return self._opened.readinto(view, offset) if self._opened else os.preadv(self.fd, [view], offset)

    def close(self) -> None:
        if self._opened:
            self._opened.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _PlainStream(io.RawIOBase):
    def __init__(self, plain: PlainFile):
        self.plain, self.position = plain, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.plain.size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        got = self.plain.readinto(view, self.position)
        self.position += got
        return got

    def close(self) -> None:
        self.plain.close()
        super().close()


def plain_stream(path: os.PathLike | str, identities: list[Identity], what: str = "backup file",
                 buffering: int = 1 << 20) -> io.BufferedReader:
    """An encrypted file's plaintext as a buffered stream, read in order (each chunk authenticated)."""
    return io.BufferedReader(_PlainStream(PlainFile(path, identities, what)), buffer_size=buffering)


class SealedBlocks:
    """``BlockWriter``'s part the format writers use (``pwrite``, ``flush``, ``close``, ``crc``), sealing
    into an age file; ``crc`` is of the plaintext, the file ``age -d`` gives back."""

    def __init__(self, fd: int, recipients: list[Recipient], *, direct: bool = False):
        from .age import SealedFile
        self.direct = direct
        self.sealed = SealedFile(fd, recipients, direct=direct)
        self.crc = FileCRC()

    def pwrite(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        view = memoryview(data)[start:len(data) if end is None else end]
        self.crc.add(offset, view)
        self.sealed.pwrite(offset, view)

    def flush(self) -> None:
        """Every write is in the file already (the last chunk waits for ``finish``)."""

    def close(self) -> None:
        """Stop the sealing's writer thread (after ``finish``, or a failure); sealing the last chunk is
        ``finish``'s."""
        self.sealed.abort()

    def finish(self) -> int:
        """Seal the last chunk; the plaintext's size."""
        return self.sealed.close()

    def description(self, recipients: list[Recipient]) -> dict:
        """The manifest's ``encryption``: the format, whom to, and what can be checked without a key."""
        return {"format": FORMAT, "recipients": [r.fingerprint for r in recipients],
                "plain_size": self.sealed.size, **self.sealed.digests()}
