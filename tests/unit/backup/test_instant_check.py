"""The checks behind an instant restore's commit: a RAW file read once, its checksums from the bytes the
claims wrote, whatever the image's object size; librbd's calls faked (``live_import_fake``)."""

from __future__ import annotations

import random

import pytest

from virtrbd.backup import instant, instant_copy
from virtrbd.backup.restore import plan_restore
from virtrbd.errors import CorruptBackupError
from virtrbd.spec import ImageSpec

from ..fakes import FakeCluster
from .conftest import scattered

MiB = 1 << 20
TARGET = ImageSpec("rbd", "back")


def flip(path, offset: int) -> None:
    """Bit rot at rest: one bit of the file, its size and structure unchanged."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))


def test_a_raw_file_is_read_once_for_its_objects_and_both_checksums(reachable, make_full, live, preads):
    content, extents = scattered(20 * MiB, 11, count=16)
    made = make_full(content, extents)
    with open(made.path, "rb") as f:
        data_bytes = sum(length for _at, length in instant_copy.data_extents(f.fileno(), len(content)))
    cluster = FakeCluster()
    instant.start(cluster, plan_restore(made.path), TARGET, qemu_user="nobody")
    preads.clear()
    result = instant_copy.copy(cluster, TARGET)
    assert result.checked == "ok" and bytes(cluster.pools["rbd"]["back"].data) == content
    assert sum(preads) == data_bytes


def across_chunks(size: int = 24 * MiB) -> tuple[bytes, list[tuple[int, int]]]:
    """Data that crosses the checksum's 4 MiB chunks inside 8 MiB objects (3-5 MiB, 11-13 MiB) and ends a
    byte past one (20 MiB), holes elsewhere."""
    rng = random.Random(14)
    extents = [(3 * MiB, 2 * MiB), (11 * MiB, 2 * MiB), (20 * MiB - 4096, 8192)]
    content = bytearray(size)
    for offset, length in extents:
        content[offset:offset + length] = rng.randbytes(length)
    return bytes(content), extents


@pytest.mark.parametrize("object_size", [MiB, 8 * MiB])
def test_objects_of_other_sizes_than_the_checksums_chunks_commit_intact(reachable, make_full, live, object_size):
    live.object_size = object_size
    content, extents = across_chunks()
    made = make_full(content, extents)
    cluster = FakeCluster()
    instant.start(cluster, plan_restore(made.path), TARGET, qemu_user="nobody")
    result = instant_copy.copy(cluster, TARGET)
    assert result.checked == "ok" and bytes(cluster.pools["rbd"]["back"].data) == content
    assert ("commit", "back") in live.calls


@pytest.mark.parametrize("object_size", [MiB, 8 * MiB])
def test_a_flipped_bit_in_any_chunk_of_an_object_is_never_committed(reachable, make_full, live, object_size):
    """An 8 MiB object holds two of the checksum's chunks, a 1 MiB one a quarter of one: the bit is in the
    second chunk a data region crosses into, so a wrong cut of the pieces would miss or misplace it."""
    live.object_size = object_size
    content, extents = across_chunks()
    made = make_full(content, extents)
    flip(made.path, 12 * MiB + 5)
    cluster = FakeCluster()
    instant.start(cluster, plan_restore(made.path), TARGET, qemu_user="nobody")
    with pytest.raises(CorruptBackupError, match="checksum mismatch.*taken back"):
        instant_copy.copy(cluster, TARGET)
    assert ("commit", "back") not in live.calls and "back" not in cluster.pools["rbd"]
