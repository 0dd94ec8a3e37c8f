"""age's X25519 keys: public recipients a hypervisor encrypts to, private identities only an operator holds.

A recipient (``age1…``) is the public half and may sit in virtrbd.conf on
every hypervisor; an identity (``AGE-SECRET-KEY-1…``) is the private half, read
only from a file that nobody but its owner can read, in the format
``age-keygen`` writes (comment lines, then the key), so that the same file
works with Debian's ``age -d -i FILE``.  No message here ever contains an
identity: errors name the file, not its content.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ... import bech32
from ...config import age_recipient
from ...errors import UsageError
from .evp import x25519, x25519_public

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"


@dataclass(frozen=True)
class PublicKey:
    """A public key, written in Bech32 under its class's ``HRP``."""

    public: bytes
    HRP: ClassVar[str] = ""

    def __str__(self) -> str:
        return bech32.encode(self.HRP, self.public)

    @property
    def fingerprint(self) -> str:
        """A short name for the key, as manifests record it: the first 8 bytes of its SHA-256, in hex."""
        return hashlib.sha256(self.public).hexdigest()[:16]


class Recipient(PublicKey):
    """A public key backups are encrypted to."""

    HRP = RECIPIENT_HRP


class Identity:
    """A private key that unwraps the files encrypted to its recipient (its bytes never printed)."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self.recipient = Recipient(x25519_public(secret))

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(32))

    def exchange(self, share: bytes) -> bytes:
        """The X25519 secret shared with ``share``; ValueError for a share that gives none."""
        return x25519(self._secret, share)

    def encode(self) -> str:
        return bech32.encode(IDENTITY_HRP, self._secret, upper=True)

    def __repr__(self) -> str:                   # never the key itself
        return f"Identity(recipient={self.recipient})"


def parse_recipient(text: str) -> Recipient:
    """An ``age1…`` recipient; a UsageError in one line for anything else (an identity above all), checked
    as virtrbd.conf's ``[backup] recipients`` are."""
    try:
        return Recipient(age_recipient(text.strip()))
    except ValueError as exc:
        raise UsageError(f"backup recipient {exc}") from None


def write_identity(path: Path) -> Identity:
    """A new identity in a new file ``path`` (0600, never over an existing file), as age-keygen writes it."""
    identity = Identity.generate()
    write_private(path, f"# public key: {identity.recipient}\n{identity.encode()}\n", "an identity")
    return identity


def write_private(path: Path, text: str, what: str) -> None:
    """A new file ``path`` holding a private key (0600 whatever the umask, never over an existing file),
    headed by the time it was made."""
    created = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise UsageError(f"{path}: exists already; {what} is never written over a file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot create it: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"# created: {created}\n{text}".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: Path, what: str) -> list[tuple[int, str]]:
    """The numbered key lines of a private key file (comments and blank lines left out); refused when it is
    not a regular file or when others may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot open it: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{what} {path}: not a regular file")
        if info.st_mode & 0o077:
            raise UsageError(f"{what} {path}: others may read it (mode {stat.S_IMODE(info.st_mode):04o}); "
                             f"chmod 600 it (and make a new key if others did)")
        text = os.read(fd, 1 << 20).decode("ascii", errors="replace")
    finally:
        os.close(fd)
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


def read_identities(path: Path) -> list[Identity]:
    """The identities in an age identity file; refused when others may read it, or when it holds none."""
    identities = []
    for number, line in read_private(path, "identity file"):
        try:
            hrp, secret = bech32.decode(line)
        except bech32.Bech32Error as exc:
            raise UsageError(f"identity file {path}: line {number}: not an age identity: {exc}") from None
        if hrp != IDENTITY_HRP or len(secret) != 32:
            what = "a public recipient" if hrp == RECIPIENT_HRP else "not an age X25519 identity"
            raise UsageError(f"identity file {path}: line {number}: {what} (AGE-SECRET-KEY-1… expected)")
        identities.append(Identity(secret))
    if not identities:
        raise UsageError(f"identity file {path}: holds no identity (AGE-SECRET-KEY-1…)")
    return identities
