"""Ed25519 keys that sign manifests, so a backup can be authenticated by whoever holds no private key.

An encrypted backup is made to *public* recipients, so anybody who can write
to the backup share could also write a well-formed age file of other content
and a manifest to match it.  The hypervisor therefore signs each manifest with
a private signing key of its own (``[backup] signing_key``, a 0600 file), and
a verifier trusts the public signers it is told of (``[backup] signers``,
``--signer``, and the signing key's own public half).  The manifest records the
SHA-256 of every byte of the encrypted file, so a good signature covers the
file too: ``verify`` then detects any changed, missing or reordered byte
without being able to decrypt anything.

Keys are Bech32 strings like age's: ``virtrbd-signer1…`` (public) and
``VIRTRBD-SIGNING-KEY-1…`` (private, only in its file, never printed).
"""

from __future__ import annotations

import os
from pathlib import Path

from ... import bech32
from ...config import SIGNER_HRP, virtrbd_signer
from ...errors import UsageError
from .evp import ed25519_public, ed25519_sign, ed25519_verify
from .keys import PublicKey, read_private, write_private

SIGNING_KEY_HRP = "virtrbd-signing-key-"
ALGORITHM = "ed25519"
#: what is signed starts with this, so a manifest's signature can never stand for another kind of message
CONTEXT = b"virtrbd manifest v2\n"


class Signer(PublicKey):
    """A public key whose signatures a verifier may trust."""

    HRP = SIGNER_HRP

    def verifies(self, message: bytes, signature: bytes) -> bool:
        return ed25519_verify(self.public, CONTEXT + message, signature)


class SigningKey:
    """The private half, held by a hypervisor to sign the manifests it writes (its bytes never printed)."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self.signer = Signer(ed25519_public(secret))

    def sign(self, message: bytes) -> bytes:
        return ed25519_sign(self._secret, CONTEXT + message)

    def encode(self) -> str:
        return bech32.encode(SIGNING_KEY_HRP, self._secret, upper=True)

    def __repr__(self) -> str:                   # never the key itself
        return f"SigningKey(signer={self.signer})"


def parse_signer(text: str) -> Signer:
    """A ``virtrbd-signer1…`` public key; a UsageError in one line for anything else."""
    try:
        return Signer(virtrbd_signer(text.strip()))
    except ValueError as exc:
        raise UsageError(f"signer {exc}") from None


def write_signing_key(path: Path) -> SigningKey:
    """A new signing key in a new file ``path`` (0600, never over an existing file)."""
    key = SigningKey(os.urandom(32))
    write_private(path, f"# public signer: {key.signer}\n{key.encode()}\n", "a signing key")
    return key


def read_signing_key(path: Path) -> SigningKey:
    """The one signing key of a key file; refused when others may read it or it holds anything else."""
    lines = read_private(path, "signing key file")
    if len(lines) != 1:
        raise UsageError(f"signing key file {path}: should hold exactly one key (VIRTRBD-SIGNING-KEY-1…), "
                         f"holds {len(lines)} lines")
    number, line = lines[0]
    try:
        hrp, secret = bech32.decode(line)
    except bech32.Bech32Error as exc:
        raise UsageError(f"signing key file {path}: line {number}: not a signing key: {exc}") from None
    if hrp != SIGNING_KEY_HRP or len(secret) != 32:
        raise UsageError(f"signing key file {path}: line {number}: not a virtrbd signing key "
                         f"(VIRTRBD-SIGNING-KEY-1… expected)")
    return SigningKey(secret)
