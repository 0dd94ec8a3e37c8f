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

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ... import bech32
from ...config import SIGNER_HRP, virtrbd_signer
from ...errors import UsageError
from .keys import PublicKey, read_private, write_private

SIGNING_KEY_HRP = "virtrbd-signing-key-"
ALGORITHM = "ed25519"
#: what is signed starts with this, so a manifest's signature can never stand for another kind of message
CONTEXT = b"virtrbd manifest v2\n"


class Signer(PublicKey):
    """A public key whose signatures a verifier may trust."""

    HRP = SIGNER_HRP

    def verifies(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, CONTEXT + message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """The private half, held by a hypervisor to sign the manifests it writes (its bytes never printed)."""

    def __init__(self, secret: bytes):
        self._key = Ed25519PrivateKey.from_private_bytes(secret)
        self.signer = Signer(self._key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                 serialization.PublicFormat.Raw))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(CONTEXT + message)

    def encode(self) -> str:
        secret = self._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())
        return bech32.encode(SIGNING_KEY_HRP, secret, upper=True)

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
