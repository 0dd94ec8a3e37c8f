"""Reading a cephx key from a keyring file, and keeping it out of sight.

The key is the one secret virtrbd handles.  It is read from a root-only file
and handed to librados in-process (``conf_set('key', …)``) or to libvirt through
``virSecretSetValue``; it never goes into argv, the environment, a log line or an
exception.  ``CephKey`` wraps it so that an accidental ``print``, ``repr`` or
f-string shows ``<hidden>`` instead.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from .errors import ConfigError


class CephKey:
    """A cephx secret (base64 text).  Only ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        value = value.strip()
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) < 16:
            raise ValueError("not a base64 cephx key")
        self._value = value

    def reveal(self) -> str:
        """The base64 key, for librados or libvirt, and for nothing else."""
        return self._value

    def __repr__(self) -> str:
        return "CephKey(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CephKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # never pickled into a cache, a queue or a log
        raise TypeError("a CephKey cannot be pickled")


def check_private(path: Path) -> None:
    """Refuse a key file that other users can read or anybody may rewrite."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: keyring not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read keyring: {exc.strerror}") from None
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        raise ConfigError(
            f"{path}: keyring is readable or writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )


def read_key(path: str | os.PathLike[str], entity: str) -> CephKey:
    """The key of ``entity`` (e.g. ``client.virt``) from a keyring file.

    Accepts Ceph's keyring format (``[client.virt]`` / ``key = …``) and a bare
    key file as ``--keyfile`` takes it.
    """
    path = Path(path)
    check_private(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read keyring: {getattr(exc, 'strerror', None) or 'not text'}") from None

    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("#", ";"))]
    if len(lines) == 1 and "=" not in lines[0].rstrip("=") and not lines[0].startswith("["):
        return _key_or_error(lines[0], path, entity)

    section = None
    for line in lines:
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == entity and "=" in line:
            name, _, value = line.partition("=")
            if name.strip() == "key":
                return _key_or_error(value, path, entity)
    raise ConfigError(f"{path}: keyring has no key for {entity}")


def _key_or_error(value: str, path: Path, entity: str) -> CephKey:
    try:
        return CephKey(value)
    except ValueError:
        raise ConfigError(f"{path}: the key for {entity} is not a valid cephx key") from None
