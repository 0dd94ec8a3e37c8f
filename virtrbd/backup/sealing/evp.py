"""ChaCha20-Poly1305 for an age payload through libcrypto's EVP interface: one context per file, in place.

``cryptography``'s AEAD sets up a new OpenSSL context for every message and
returns new ``bytes``: for an age payload, one message per 64 KiB chunk, that
is some ten calls into C per chunk, each letting go of the GIL and taking it
back, and two more copies of every byte.  A ``ChunkCipher`` keeps one context
for the file's key, changes only the nonce per chunk, and seals into or opens
into a buffer the caller gives (the batch being handed to the writer, the
restore's own buffer).  It is the same libcrypto (OpenSSL 3) ``cryptography``
and librados use; the header's X25519, HKDF and HMAC stay with
``cryptography`` and ``hmac``.  The figures: docs/performance.md.

A ``ChunkCipher`` belongs to one thread at a time (the ``CipherThread``).
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_char, c_int, c_void_p

from ...errors import VirtrbdError

KEY = 32
NONCE = 12
TAG = 16
_GET_TAG, _SET_TAG = 0x10, 0x11


def _libcrypto() -> ctypes.CDLL:
    """libcrypto with the prototypes used here; calls release the GIL (``CDLL``), as hashing does."""
    lib = ctypes.CDLL("libcrypto.so.3")
    lib.EVP_chacha20_poly1305.restype = c_void_p
    lib.EVP_chacha20_poly1305.argtypes = []
    lib.EVP_CIPHER_CTX_new.restype = c_void_p
    lib.EVP_CIPHER_CTX_new.argtypes = []
    lib.EVP_CIPHER_CTX_free.restype = None
    lib.EVP_CIPHER_CTX_free.argtypes = [c_void_p]
    lib.EVP_CipherInit_ex.argtypes = [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int]
    lib.EVP_CipherUpdate.argtypes = [c_void_p, c_void_p, POINTER(c_int), c_void_p, c_int]
    lib.EVP_CipherFinal_ex.argtypes = [c_void_p, c_void_p, POINTER(c_int)]
    lib.EVP_CIPHER_CTX_ctrl.argtypes = [c_void_p, c_int, c_int, c_void_p]
    return lib


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _libcrypto()
    return _LIB


def _address(buffer, at: int, length: int):
    """A ctypes view of ``buffer[at:at + length]``: ``bytes`` read in place (as ``c_char_p`` is), or any
    writable buffer (``bytearray``, a writable ``memoryview``)."""
    if isinstance(buffer, bytes):
        return (ctypes.cast(ctypes.c_char_p(buffer), c_void_p).value or 0) + at
    return (c_char * length).from_buffer(buffer, at)


def _plus(address, offset: int):
    """``address`` (an ``int`` or a ctypes array) moved on by ``offset`` bytes, as a pointer argument."""
    return address + offset if isinstance(address, int) else byref(address, offset)


class ChunkCipher:
    """ChaCha20-Poly1305 under one 32-byte key: ``seal_into`` / ``open_into`` one message at a time."""

    def __init__(self, key: bytes, encrypt: bool):
        if len(key) != KEY:
            raise ValueError("ChaCha20-Poly1305 takes a 32-byte key")
        self._lib = lib = _lib()
        self._encrypt = 1 if encrypt else 0
        self._ctx = lib.EVP_CIPHER_CTX_new()
        self._count = c_int()
        if not self._ctx or lib.EVP_CipherInit_ex(self._ctx, lib.EVP_chacha20_poly1305(), None, key, None,
                                                   self._encrypt) != 1:
            self.close()
            raise VirtrbdError("internal error: libcrypto refused a ChaCha20-Poly1305 context")

    def seal_into(self, nonce: bytes, plaintext, out, at: int) -> int:
        """``plaintext`` sealed into ``out[at:]`` (ciphertext, then the 16-byte tag); the bytes written."""
        size = len(plaintext)
        lib, ctx, count = self._lib, self._ctx, self._count
        target = _address(out, at, size + TAG)
        ok = (lib.EVP_CipherInit_ex(ctx, None, None, None, nonce, 1) == 1
              and lib.EVP_CipherUpdate(ctx, target, byref(count), _address(plaintext, 0, size), size) == 1
              and lib.EVP_CipherFinal_ex(ctx, None, byref(count)) == 1
              and lib.EVP_CIPHER_CTX_ctrl(ctx, _GET_TAG, TAG, _plus(target, size)) == 1)
        if not ok:
            raise VirtrbdError("internal error: libcrypto failed to seal a chunk")
        return size + TAG

    def open_into(self, nonce: bytes, sealed, length: int, out, at: int) -> bool:
        """The first ``length`` bytes of ``sealed`` (ciphertext and tag) opened into ``out[at:]``; False,
        with ``out`` holding no checked byte, when the tag does not match."""
        size = length - TAG
        if size < 0:
            return False
        lib, ctx, count = self._lib, self._ctx, self._count
        source = _address(sealed, 0, length)
        return (lib.EVP_CipherInit_ex(ctx, None, None, None, nonce, 0) == 1
                and lib.EVP_CIPHER_CTX_ctrl(ctx, _SET_TAG, TAG, _plus(source, size)) == 1
                and lib.EVP_CipherUpdate(ctx, _address(out, at, size), byref(count), source, size) == 1
                and lib.EVP_CipherFinal_ex(ctx, None, byref(count)) == 1)

    def close(self) -> None:
        if self._ctx:
            self._lib.EVP_CIPHER_CTX_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()
