"""cephx keys for the lab, made in-process and written into 0600 keyrings.

A cephx secret is the base64 of a small little-endian record: key type
(1 = AES), creation time (seconds, nanoseconds), length (16) and 16 random
bytes — the layout ``ceph-authtool --gen-key`` produces.  Making keys here
saves a process per key at bring-up and keeps them out of every argv.
"""

from __future__ import annotations

import base64
import os
import struct
import time
from pathlib import Path

from ..keyring import CephKey

CEPH_CRYPTO_AES = 1


def generate_key() -> CephKey:
    now = time.time_ns()
    secret = os.urandom(16)
    blob = struct.pack("<HIIH", CEPH_CRYPTO_AES, now // 1_000_000_000, now % 1_000_000_000, len(secret)) + secret
    return CephKey(base64.b64encode(blob).decode("ascii"))


def keyring_text(entries: dict[str, tuple[CephKey, dict[str, str]]]) -> str:
    """Keyring text for ``{entity: (key, {service: capability})}``."""
    lines = []
    for entity, (key, caps) in entries.items():
        lines.append(f"[{entity}]")
        lines.append(f"\tkey = {key.reveal()}")
        for service, cap in caps.items():
            lines.append(f'\tcaps {service} = "{cap}"')
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write a file that only its owner can read, created with that mode (no window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)
