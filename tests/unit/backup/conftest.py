"""In-memory images and backups made from them: the formats and the engine tested without a cluster."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from virtrbd.backup import instant, instant_copy
from virtrbd.backup.make import write_full_backup, write_incremental_backup
from virtrbd.backup.memory import MemorySource
from virtrbd.backup.results import BackupPlan, SourceFacts
from virtrbd.spec import ImageSpec

from .live_import_fake import OBJECT, FakeLiveImport

MiB = 1 << 20


def scattered(size: int, seed: int, count: int = 30, sizes=(1, 511, 4096, 65536 + 7, MiB)) -> tuple[bytes, list]:
    """Random data at random places: (content, allocation map)."""
    rng = random.Random(seed)
    data = bytearray(size)
    extents = []
    for _ in range(count):
        if size == 0:
            break
        offset = rng.randrange(size)
        length = min(rng.choice(sizes), size - offset)
        data[offset:offset + length] = rng.randbytes(length)
        extents.append((offset, length))
    return bytes(data), extents


class MemoryDiffSource(MemorySource):
    """The newer snapshot in memory, plus the changes from an older one: (offset, length, exists)."""

    def __init__(self, data: bytes, changes: list[tuple[int, int, bool]]):
        super().__init__(data)
        self._changes = sorted(changes)

    def changes(self, offset: int, length: int, older: str):
        end = offset + length
        return [(max(o, offset), min(o + n, end) - max(o, offset), e)
                for o, n, e in self._changes if o < end and o + n > offset]


def apply_changes(old: bytes, new_size: int, writes: list[tuple[int, bytes]], zeroes: list[tuple[int, int]]):
    """The newer content and its change list, as diff_iterate would report it."""
    data = bytearray(old[:new_size].ljust(new_size, b"\0"))
    changes = []
    for offset, payload in writes:
        data[offset:offset + len(payload)] = payload
        changes.append((offset, len(payload), True))
    for offset, length in zeroes:
        data[offset:offset + length] = bytes(length)
        changes.append((offset, length, False))
    return bytes(data), changes


@pytest.fixture
def make_full(tmp_path: Path):
    """make_full(content, extents, fmt) -> BackupResult, a full backup of 'rbd/img@s1' in tmp_path."""
    def make(content: bytes, extents=None, fmt: str = "raw", *, snapshot: str = "s1", image: str = "img",
             image_id: str = "abc123", dest: Path | None = None, cluster_size: int = 64 << 10, direct=True,
             domain: dict | None = None, recipients: tuple = (), signing_key=None):
        source = MemorySource(content, extents)
        plan = BackupPlan(ImageSpec("rbd", image, snapshot), dest or tmp_path, fmt, None, cluster_size, domain,
                          recipients=recipients, signing_key=signing_key)
        info = SourceFacts(size=len(content), image_id=image_id, snapshot_id=1)
        return write_full_backup(source, info, plan, direct_io=direct)
    return make


@pytest.fixture
def make_incremental(tmp_path: Path):
    def make(content: bytes, changes, older: str, newer: str, *, image: str = "img", image_id: str = "abc123",
             snapshot_id: int = 2, dest: Path | None = None, recipients: tuple = (), signing_key=None):
        source = MemoryDiffSource(content, changes)
        plan = BackupPlan(ImageSpec("rbd", image, newer), dest or tmp_path, "rbd-diff-v1",
                          ImageSpec("rbd", image, older), recipients=recipients, signing_key=signing_key)
        info = SourceFacts(size=len(content), image_id=image_id, snapshot_id=snapshot_id)
        return write_incremental_backup(source, info, plan)
    return make


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def data_offset(path: Path) -> int:
    """The first data byte of a sparse file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_DATA)
    finally:
        os.close(fd)


def as_before_xxh3(manifest: Path, content: bytes, *, data_crc: bool = True) -> None:
    """Rewrite a full backup's manifest as virtrbd wrote it while SHA-256 was its content checksum: the
    chunk digests in SHA-256 and (``data_crc``) the CRC-32C of the data a restore checked; sealed again."""
    import json

    from virtrbd.backup.formats import manifest as manifests
    from virtrbd.backup.formats.checksum import CHUNK, SHA256_CHUNKS, ContentDigest, DataCRC
    digest, crc = ContentDigest(len(content), algorithm=SHA256_CHUNKS), DataCRC()
    for index in range(digest.count):
        chunk = content[index * CHUNK:(index + 1) * CHUNK]
        digest.add(index, chunk)
        crc.add(index, chunk)
    data = json.loads(manifest.read_text())
    data["checksum"] = {"algorithm": SHA256_CHUNKS, "chunk_size": CHUNK, "value": digest.hexdigest()}
    if data_crc:
        data["checksum"]["data_crc32c"] = crc.hexdigest()
    data["seal"] = manifests.seal_of(data)
    manifest.write_text(manifests.dumps(data))


@pytest.fixture
def live(monkeypatch):
    """The instant-restore job's librbd calls faked (``FakeLiveImport``), its objects ``OBJECT`` bytes."""
    FakeLiveImport.calls = []
    FakeLiveImport.busy = False
    FakeLiveImport.claimed = set()
    FakeLiveImport.object_size = OBJECT
    monkeypatch.setattr(instant, "LiveImport", FakeLiveImport)
    monkeypatch.setattr(instant_copy, "LiveImport", FakeLiveImport)
    monkeypatch.setattr(instant_copy, "_object_size", lambda cluster, spec: FakeLiveImport.object_size)
    return FakeLiveImport


@pytest.fixture
def preads(monkeypatch) -> list[int]:
    """The length of every ``os.pread`` from now on: how much a reader of backup files read."""
    read: list[int] = []
    real_pread = os.pread

    def counted(fd, length, offset):
        data = real_pread(fd, length, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counted)
    return read
