"""Reading a sparse backup file fetches its data regions and nothing of its holes.

After a long data region the kernel's read-ahead runs on through the rest of
the file, holes included, filling them with zeros page by page (on a share it
fetches them): a RAW backup of an image written in its first half had its
second half read that way at every restore.  util-linux's ``fincore`` counts
what a reader brought into the page cache."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from virtrbd.backup import instant_copy
from virtrbd.backup.formats import manifest as manifests
from virtrbd.backup.formats.raw import RawReader
from virtrbd.backup.verify import run_verify

MiB = 1 << 20
SIZE = 64 * MiB
#: a run of 16 MiB, then single blocks 1 MiB apart, as a half-written image after scattered changes
REGIONS = [(0, 16 * MiB)] + [(offset, 4096) for offset in range(16 * MiB + 12288, SIZE, MiB)]
DATA = sum(length for _, length in REGIONS)


@pytest.fixture
def scattered(make_full):
    """A RAW backup file holding ``REGIONS``, none of it in the page cache."""
    if shutil.which("fincore") is None:
        pytest.skip("fincore (util-linux) is not installed")
    content = bytearray(SIZE)
    for offset, length in REGIONS:
        content[offset:offset + length] = os.urandom(length)
    path = make_full(bytes(content), REGIONS).path
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if cached(path):
        pytest.skip(f"{path.parent} keeps files in memory (tmpfs?): what a read brings in cannot be told")
    return path


def cached(path) -> int:
    """Bytes of ``path`` in the page cache, as ``fincore`` counts them."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def test_a_plain_reader_of_the_same_regions_brings_in_the_holes(scattered):
    """The measure: with the kernel's read-ahead, the holes come in too, so the tests below can fail (they
    did before the read-ahead was turned off; a device with a small ``read_ahead_kb`` may not show it)."""
    fd = os.open(scattered, os.O_RDONLY)
    try:
        for offset, length in REGIONS:
            for at in range(offset, offset + length, 4 * MiB):
                os.pread(fd, min(4 * MiB, offset + length - at), at)
    finally:
        os.close(fd)
    assert cached(scattered) > 2 * DATA


def test_a_restore_reads_only_the_data(scattered):
    with RawReader(scattered) as raw:
        assert sum(len(data) for _, parts in raw.chunks() for _, data in parts) == DATA
    assert cached(scattered) <= DATA + MiB


def test_verify_reads_only_the_data(scattered):
    found = run_verify(manifests.resolve(scattered))             # raises on a mismatch
    assert found.judged == "file and content" and found.checked_bytes == DATA
    assert cached(scattered) <= DATA + MiB


def test_an_instant_restore_reads_only_the_data(scattered):
    pieces = [data for _, found in instant_copy.file_objects(scattered, 4 * MiB) for _, data in found]
    assert sum(len(data) for data in pieces) == DATA
    assert cached(scattered) <= DATA + MiB


def test_verify_reads_a_raw_files_data_once_for_both_checksums(scattered, preads):
    """The file's CRC and its content's digest from the same reads: a RAW file is the image as it is."""
    found = run_verify(manifests.resolve(scattered))
    assert found.judged == "file and content" and sum(preads) == DATA


def test_the_readers_ask_ahead_for_data_and_never_for_a_hole(scattered, monkeypatch):
    """With the kernel's read-ahead off, each reader starts the next piece of data itself: over the whole
    file it asks for all the data but the first piece, and for no byte of a hole."""
    from virtrbd.backup import file_crc, read_ahead
    from virtrbd.backup.formats import raw

    asked: list[tuple[int, int]] = []

    def record(fd, offset, length):
        asked.append((offset, offset + length))

    def inside_data(start: int, end: int) -> bool:
        return any(offset <= start and end <= offset + length for offset, length in REGIONS)

    def covered() -> int:
        return sum(end - start for start, end in sorted(set(asked)))

    monkeypatch.setattr(raw, "will_need", record)
    with RawReader(scattered) as reader:
        list(reader.chunks())
    assert asked and all(inside_data(*r) for r in asked) and covered() == DATA - 4 * MiB   # all but chunk 0
    asked.clear()
    fd = read_ahead.without_read_ahead(os.open(scattered, os.O_RDONLY))
    try:
        file_crc.of_file(fd, SIZE, will_need=record)
    finally:
        os.close(fd)
    assert asked and all(inside_data(*r) for r in asked) and covered() == 12 * MiB   # the run's 2nd-4th blocks
    asked.clear()
    monkeypatch.setattr(instant_copy, "will_need", record)
    list(instant_copy.file_objects(scattered, 4 * MiB))
    assert asked and all(inside_data(*r) for r in asked) and covered() == 12 * MiB   # the run's 2nd-4th objects
