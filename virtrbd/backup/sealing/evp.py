"""The primitives of encrypted backups through libcrypto's EVP interface: age's ChaCha20-Poly1305, one
context per file, in place, and its X25519; the manifests' Ed25519 signatures.

``cryptography``'s AEAD sets up a new OpenSSL context for every message and
returns new ``bytes``: for an age payload, one message per 64 KiB chunk, that
is some ten calls into C per chunk, each letting go of the GIL and taking it
back, and two more copies of every byte.  A ``ChunkCipher`` keeps one context
for the file's key, changes only the nonce per chunk, and seals into or opens
into a buffer the caller gives (the batch being handed to the writer, the
restore's own buffer).  X25519 (the header's key agreement, the identities'
public keys) and Ed25519 come from the same library: ``cryptography`` would
bring its OpenSSL bindings for them, 8 MiB of a process that moves data in a
bounded memory, and one more package on every hypervisor.  It is the same
libcrypto (OpenSSL 3) that librados loads; HKDF and HMAC are the standard
library's.  The figures: docs/performance.md.

A ``ChunkCipher`` belongs to one thread at a time (the ``CipherThread``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import POINTER, byref, c_char, c_char_p, c_int, c_size_t, c_void_p

from ...errors import VirtrbdError

KEY = 32
TAG = 16
_GET_TAG, _SET_TAG = 0x10, 0x11
_NID_X25519 = 1034
_NID_ED25519 = 1087
#: a raw X25519 or Ed25519 key (private or public), and an X25519 shared secret
CURVE_KEY = 32
SIGNATURE_BYTES = 64


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
    for name in ("EVP_PKEY_new_raw_private_key", "EVP_PKEY_new_raw_public_key"):
        getattr(lib, name).restype = c_void_p
        getattr(lib, name).argtypes = [c_int, c_void_p, c_char_p, c_size_t]
    lib.EVP_PKEY_get_raw_public_key.argtypes = [c_void_p, c_void_p, POINTER(c_size_t)]
    lib.EVP_PKEY_free.restype = None
    lib.EVP_PKEY_free.argtypes = [c_void_p]
    lib.EVP_PKEY_CTX_new.restype = c_void_p
    lib.EVP_PKEY_CTX_new.argtypes = [c_void_p, c_void_p]
    lib.EVP_PKEY_CTX_free.restype = None
    lib.EVP_PKEY_CTX_free.argtypes = [c_void_p]
    lib.EVP_PKEY_derive_init.argtypes = [c_void_p]
    lib.EVP_PKEY_derive_set_peer.argtypes = [c_void_p, c_void_p]
    lib.EVP_PKEY_derive.argtypes = [c_void_p, c_void_p, POINTER(c_size_t)]
    lib.EVP_MD_CTX_new.restype = c_void_p
    lib.EVP_MD_CTX_new.argtypes = []
    lib.EVP_MD_CTX_free.restype = None
    lib.EVP_MD_CTX_free.argtypes = [c_void_p]
    for name in ("EVP_DigestSignInit", "EVP_DigestVerifyInit"):
        getattr(lib, name).argtypes = [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p]
    lib.EVP_DigestSign.argtypes = [c_void_p, c_void_p, POINTER(c_size_t), c_char_p, c_size_t]
    lib.EVP_DigestVerify.argtypes = [c_void_p, c_char_p, c_size_t, c_char_p, c_size_t]
    lib.ERR_clear_error.restype = None
    lib.ERR_clear_error.argtypes = []
    return lib


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _libcrypto()
    return _LIB


def _forget_errors() -> None:
    """Empty libcrypto's error queue after a failed call: a later caller of libcrypto in this thread
    (Python's ssl or hashlib among them) must not find our failure there."""
    _lib().ERR_clear_error()


def _address(buffer, at: int, length: int):
    """A ctypes view of ``buffer[at:at + length]``: ``bytes`` read in place (as ``c_char_p`` is), any
    writable buffer (``bytearray``, a writable ``memoryview``), or an address from ``pin``."""
    if isinstance(buffer, int):
        return buffer + at
    if isinstance(buffer, bytes):
        return (ctypes.cast(ctypes.c_char_p(buffer), c_void_p).value or 0) + at
    return (c_char * length).from_buffer(buffer, at)


def pin(buffer) -> tuple[int, object]:
    """The address of a writable buffer, and what keeps it there: while the second lives, the buffer can
    be neither resized nor freed.  For a loop over many chunks of one buffer, where a ctypes view of each
    would cost more than the call it is for."""
    view = (c_char * len(buffer)).from_buffer(buffer)
    return ctypes.addressof(view), view


def _plus(address, offset: int):
    """``address`` (an ``int`` or a ctypes array) moved on by ``offset`` bytes, as a pointer argument."""
    return address + offset if isinstance(address, int) else byref(address, offset)


class ChunkCipher:
    """ChaCha20-Poly1305 under one 32-byte key: ``seal_into`` / ``open_into`` one message at a time."""

    def __init__(self, key: bytes, encrypt: bool):
        if len(key) != KEY:
            raise ValueError("ChaCha20-Poly1305 takes a 32-byte key")
        self._lib = lib = _lib()
        self._ctx = lib.EVP_CIPHER_CTX_new()
        self._count = c_int()
        if not self._ctx or lib.EVP_CipherInit_ex(self._ctx, lib.EVP_chacha20_poly1305(), None, key, None,
                                                   1 if encrypt else 0) != 1:
            self.close()
            _forget_errors()
            raise VirtrbdError("internal error: libcrypto refused a ChaCha20-Poly1305 context")

    def seal_into(self, nonce: bytes, plaintext, out, at: int, length: int | None = None) -> int:
        """``plaintext`` (its first ``length`` bytes) sealed into ``out[at:]``: the ciphertext, then the
        16-byte tag; the bytes written.  ``plaintext`` may be where the ciphertext goes (in place)."""
        size = len(plaintext) if length is None else length
        lib, ctx, count = self._lib, self._ctx, self._count
        target = _address(out, at, size + TAG)
        ok = (lib.EVP_CipherInit_ex(ctx, None, None, None, nonce, 1) == 1
              and lib.EVP_CipherUpdate(ctx, target, byref(count), _address(plaintext, 0, size), size) == 1
              and lib.EVP_CipherFinal_ex(ctx, None, byref(count)) == 1
              and lib.EVP_CIPHER_CTX_ctrl(ctx, _GET_TAG, TAG, _plus(target, size)) == 1)
        if not ok:
            _forget_errors()
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
        ok = (lib.EVP_CipherInit_ex(ctx, None, None, None, nonce, 0) == 1
              and lib.EVP_CIPHER_CTX_ctrl(ctx, _SET_TAG, TAG, _plus(source, size)) == 1
              and lib.EVP_CipherUpdate(ctx, _address(out, at, size), byref(count), source, size) == 1
              and lib.EVP_CipherFinal_ex(ctx, None, byref(count)) == 1)
        if not ok:
            _forget_errors()
        return ok

    def close(self) -> None:
        if self._ctx:
            self._lib.EVP_CIPHER_CTX_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()


# --- X25519 --------------------------------------------------------------------------------------------

@contextmanager
def _raw_key(nid: int, raw: bytes, *, private: bool) -> Iterator[int | None]:
    """An ``EVP_PKEY`` of algorithm ``nid`` from its raw bytes (None when they do not parse), freed after."""
    lib = _lib()
    make = lib.EVP_PKEY_new_raw_private_key if private else lib.EVP_PKEY_new_raw_public_key
    key = make(nid, None, raw, len(raw))
    try:
        yield key
    finally:
        lib.EVP_PKEY_free(key)


def _public_of(nid: int, private: bytes, what: str) -> bytes:
    """The 32-byte public key of the raw private key ``private`` of algorithm ``nid``."""
    lib = _lib()
    out, length = ctypes.create_string_buffer(CURVE_KEY), c_size_t(CURVE_KEY)
    with _raw_key(nid, private, private=True) as key:
        if not key or lib.EVP_PKEY_get_raw_public_key(key, out, byref(length)) != 1 or length.value != CURVE_KEY:
            _forget_errors()
            raise ValueError(f"not an {what} private key")
    return out.raw


def x25519_public(private: bytes) -> bytes:
    """The public key of the X25519 private key ``private`` (32 bytes each)."""
    return _public_of(_NID_X25519, private, "X25519")


def x25519(private: bytes, public: bytes) -> bytes:
    """The X25519 shared secret of ``private`` and the peer's ``public``; ValueError for a public key that
    does not parse or gives the all-zero secret (a point of small order: no secret at all)."""
    lib = _lib()
    out, length = ctypes.create_string_buffer(CURVE_KEY), c_size_t(CURVE_KEY)
    with _raw_key(_NID_X25519, private, private=True) as mine, _raw_key(_NID_X25519, public, private=False) as peer:
        context = lib.EVP_PKEY_CTX_new(mine, None) if mine and peer else None
        try:
            if not (context and lib.EVP_PKEY_derive_init(context) == 1
                    and lib.EVP_PKEY_derive_set_peer(context, peer) == 1
                    and lib.EVP_PKEY_derive(context, out, byref(length)) == 1
                    and length.value == CURVE_KEY and any(out.raw)):
                _forget_errors()
                raise ValueError("no X25519 secret with that public key")
        finally:
            lib.EVP_PKEY_CTX_free(context)
    return out.raw


# --- Ed25519 (the manifests' signatures) ----------------------------------------------------------------

@contextmanager
def _digest_context(key: int | None) -> Iterator[int | None]:
    """An ``EVP_MD_CTX`` to sign or verify with ``key`` (None without a key), freed after."""
    lib = _lib()
    context = lib.EVP_MD_CTX_new() if key else None
    try:
        yield context
    finally:
        lib.EVP_MD_CTX_free(context)


def ed25519_public(private: bytes) -> bytes:
    """The public key of the Ed25519 private key ``private`` (32 bytes each, RFC 8032)."""
    return _public_of(_NID_ED25519, private, "Ed25519")


def ed25519_sign(private: bytes, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message`` under ``private`` (deterministic, RFC 8032)."""
    lib = _lib()
    out, length = ctypes.create_string_buffer(SIGNATURE_BYTES), c_size_t(SIGNATURE_BYTES)
    with _raw_key(_NID_ED25519, private, private=True) as key, _digest_context(key) as context:
        if not (context and lib.EVP_DigestSignInit(context, None, None, None, key) == 1
                and lib.EVP_DigestSign(context, out, byref(length), message, len(message)) == 1
                and length.value == SIGNATURE_BYTES):
            _forget_errors()
            raise VirtrbdError("internal error: libcrypto failed to make an Ed25519 signature")
    return out.raw


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``message``; False for a key or a
    signature that does not parse."""
    lib = _lib()
    with _raw_key(_NID_ED25519, public, private=False) as key, _digest_context(key) as context:
        good = bool(context and len(signature) == SIGNATURE_BYTES
                    and lib.EVP_DigestVerifyInit(context, None, None, None, key) == 1
                    and lib.EVP_DigestVerify(context, signature, len(signature), message, len(message)) == 1)
    if not good:
        _forget_errors()
    return good
