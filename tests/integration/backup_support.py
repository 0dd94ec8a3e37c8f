"""What the backup integration tests share: images made with bare librbd, independent judges, clean-up.

Holds no tests; the fixtures ``judge`` and ``images`` (in conftest) hand these out.
Snapshots are made with ``image.create_snap`` (not through
the layering API); Ceph's ``rbd`` and QEMU's ``qemu-img`` are used only as
judges, with ``--keyring``/``keyring=`` paths (never a key on a command line).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..cli_helpers import Result
from ..ledger import LEDGER

MiB = 1 << 20
CHUNK = 4 * MiB


@dataclass
class Judge:
    """Ceph's and QEMU's own tools pointed at the lab with the restricted user's keyring."""

    ceph_conf: Path
    keyring: Path
    monitor: str

    def rbd(self, *args: str, check: bool = True, progress_option: bool = True) -> subprocess.CompletedProcess:
        """``progress_option``: pass --no-progress (which the listing commands, e.g. diff and info, refuse)."""
        quiet = ["--no-progress"] if progress_option else []
        result = subprocess.run(["rbd", "-c", str(self.ceph_conf), "--id", "virt", "--keyring", str(self.keyring),
                                 *quiet, *args], capture_output=True, text=True, timeout=300)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def qemu_source(self, spec: str) -> str:
        host, port = self.monitor.rsplit(":", 1)
        return f"rbd:{spec}:id=virt:keyring={self.keyring}:mon_host={host}\\:{port}"

    def qemu_img(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=300)


class Images:
    """Creates images for a test and removes them (with their snapshots) afterwards, whatever happened."""

    def __init__(self, storage):
        self.storage = storage
        self.names: list[str] = []

    PREFIX = "bkt-"

    def name(self) -> str:
        name = f"{self.PREFIX}{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    def create(self, size: int, writes=(), *, snapshot: str | None = "s1", name: str | None = None) -> str:
        """An image of ``size`` with ``writes`` [(offset, bytes)], and a snapshot of it."""
        name = name or self.name()
        self.storage.create_image(name, size)
        self.write(name, writes, snapshot=snapshot)
        return name

    def write(self, name: str, writes=(), *, discards=(), snapshot: str | None = None) -> None:
        with self.storage.cluster.image("rbd", name) as image:
            for offset, data in writes:
                image.write(data, offset)
            for offset, length in discards:
                image.discard(offset, length)
            if snapshot:
                image.create_snap(snapshot)

    def resize(self, name: str, size: int) -> None:
        with self.storage.cluster.image("rbd", name) as image:
            image.resize(size)

    def ours(self) -> list[str]:
        """Every image in the backup tests' name space (targets, temporary restore images included).

        The lab is shared: other tests create and remove images in the same pool
        at any moment, so "nothing was written" is checked on this name space.
        """
        return sorted(n for n in self.storage.list_images() if n.startswith(self.PREFIX))

    def leftovers(self, name: str) -> list[str]:
        """Images a restore into ``name`` may have left (temporary names)."""
        return [n for n in self.storage.list_images() if n.startswith(f"{name}.virtrbd-restore-")]

    def cleanup(self) -> None:
        """Newest first, so clones go before their parents; protected snapshots are unprotected."""
        existing = set(self.storage.list_images())
        for name in reversed(self.names):
            for candidate in [name, *self.leftovers(name)]:
                if candidate not in existing:
                    continue
                with self.storage.cluster.image("rbd", candidate) as image:
                    for snap in list(image.list_snaps()):
                        if image.is_protected_snap(snap["name"]):
                            image.unprotect_snap(snap["name"])
                        image.remove_snap(snap["name"])
                self.storage.remove_image(candidate)


def content_of(storage, spec: str) -> bytes:
    pool_image, _, snap = spec.partition("@")
    pool, image = pool_image.split("/")
    with storage.cluster.image(pool, image, snapshot=snap or None, read_only=True) as img:
        size = img.size()
        return b"".join(img.read(o, min(CHUNK, size - o)) for o in range(0, size, CHUNK))


def sha256_of(storage, spec: str) -> str:
    return hashlib.sha256(content_of(storage, spec)).hexdigest()


def scattered_writes(size: int, seed: int, count: int = 25) -> list[tuple[int, bytes]]:
    """Random data at random offsets, holes between (sizes from 1 byte to 1 MiB)."""
    rng = random.Random(seed)
    writes = []
    for _ in range(count):
        offset = rng.randrange(size)
        length = min(rng.choice([1, 512, 4096, 65536 + 13, MiB]), size - offset)
        writes.append((offset, rng.randbytes(length)))
    return writes


def random_bytes(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length) if length < 64 * MiB else os.urandom(length)


def record_bad_input(case: str, result: Result, nothing_changed: bool) -> None:
    """For the reliability table: refused in one line with exit 1, and nothing changed."""
    clean = result.code == 1 and len(result.err_lines) == 1 and "Traceback" not in result.err
    LEDGER.bad_input(case, clean and nothing_changed)
