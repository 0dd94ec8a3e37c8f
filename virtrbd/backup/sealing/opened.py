"""An age file opened with an identity: its plaintext at any offset, every chunk authenticated before use.

Up to ``READ`` sealed chunks are read from the file with one call into a
buffer of the file's own, and each is opened on the ``CipherThread``
(ChaCha20-Poly1305 must not run where hashing runs, ``cipher_thread``)
straight into the caller's buffer when the caller asks for the whole chunk, as
a restore does; a part of a chunk goes through a second buffer.  A chunk that
fails its authentication leaves zeros where it was to go and raises, so no
unchecked byte reaches the caller.
"""

from __future__ import annotations

import ctypes
import os

from ...errors import CorruptBackupError
from .age import CHUNK, NONCE, SEALED_CHUNK, TAG, chunk_nonce, hkdf, read_header, unwrap
from .cipher_thread import CipherThread
from .evp import ChunkCipher, pin
from .keys import Identity

#: sealed chunks read from the file with one call (1 MiB)
READ = 16


class OpenedFile:
    """The plaintext of an age file, read at any offset; each chunk checked on the cipher's own thread,
    which ``close`` ends."""

    def __init__(self, fd: int, identities: list[Identity], what: str):
        self.fd, self.what = fd, what
        header = read_header(fd, what)
        self._cipher = CipherThread("age-open")
        try:
            file_key = self._cipher.call(unwrap, header, identities, what)
            nonce = os.pread(fd, NONCE, header.length)
            if len(nonce) != NONCE:
                raise CorruptBackupError(f"{what}: cut short after its age header")
            self.payload = header.length + NONCE
            sealed_size = os.fstat(fd).st_size - self.payload
            chunks = max(1, -(-sealed_size // SEALED_CHUNK))
            self.size = sealed_size - chunks * TAG
            if self.size < 0 or sealed_size - (chunks - 1) * SEALED_CHUNK <= TAG and chunks > 1:
                raise CorruptBackupError(f"{what}: cut short (its last age chunk is incomplete)")
            self._chunks = self._cipher.call(ChunkCipher, hkdf(file_key, nonce, b"payload"), False)
        except BaseException:
            self._cipher.close()
            raise
        self.last = chunks - 1
        self._sealed = bytearray(READ * SEALED_CHUNK)  # chunks as read from the file
        self._plain = bytearray(CHUNK)                 # a chunk only part of which was asked for
        (self._sealed_at, self._pinned_sealed), (self._plain_at, self._pinned_plain) = \
            pin(self._sealed), pin(self._plain)

    def _length(self, index: int) -> int:
        """The plaintext bytes of chunk ``index``."""
        return CHUNK if index < self.last else self.size - self.last * CHUNK

    def _open(self, index: int, sealed_at: int, available: int, out_at: int) -> None:
        """Chunk ``index``, of which ``available`` bytes were read to ``sealed_at``, authenticated (the last
        one checked to be the last) and opened to ``out_at`` (addresses: ``evp.pin``)."""
        length = self._length(index)
        if available < length + TAG or not self._chunks.open_into(chunk_nonce(index, index == self.last),
                                                                   sealed_at, length + TAG, out_at, 0):
            ctypes.memset(out_at, 0, length)
            raise CorruptBackupError(f"{self.what}: age chunk {index} fails its authentication (changed, "
                                     f"moved, cut short or appended to)")

    def readinto(self, view: memoryview, offset: int) -> int:
        """Plaintext at ``offset`` into ``view``, fewer bytes at the end; how many."""
        return self._cipher.call(self._fill, view, offset)

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` plaintext bytes at ``offset`` (fewer at the end), as ``os.pread`` gives them."""
        buffer = bytearray(max(0, min(length, self.size - offset)))
        self.readinto(memoryview(buffer), offset)
        return bytes(buffer)

    def _fill(self, view: memoryview, offset: int) -> int:
        end = min(offset + len(view), self.size)
        if end <= offset:
            return 0
        view_at, pinned = pin(view)
        at = offset
        try:
            while at < end:
                first = at // CHUNK
                count = min(READ, (end - 1) // CHUNK - first + 1)
                got = os.preadv(self.fd, [memoryview(self._sealed)[:count * SEALED_CHUNK]],
                                self.payload + first * SEALED_CHUNK)
                for index in range(first, first + count):
                    within, length = at - index * CHUNK, self._length(index)
                    take = min(length - within, end - at)
                    skip = (index - first) * SEALED_CHUNK
                    if within == 0 and take == length:
                        self._open(index, self._sealed_at + skip, got - skip, view_at + at - offset)
                    else:
                        self._open(index, self._sealed_at + skip, got - skip, self._plain_at)
                        view[at - offset:at - offset + take] = memoryview(self._plain)[within:within + take]
                    at += take
        finally:
            del pinned
        return end - offset

    def close(self) -> None:
        self._cipher.close()
