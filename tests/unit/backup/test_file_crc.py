"""The CRC-32C of a file as written: the zero-run arithmetic against the real CRC, writes in any order."""

from __future__ import annotations

import os
import random

import pytest

from virtrbd.backup import file_crc
from virtrbd.backup.file_crc import FileCRC

from ..test_crc32c import judge


@pytest.mark.parametrize("length", [0, 1, 3, 4096, 65537, 1 << 20])
def test_zeros_cost_no_reading_and_match_the_real_crc(length):
    assert file_crc.of_zeros(length) == judge(bytes(length))
    head = os.urandom(100)
    assert file_crc.extend_zeros(judge(head), length) == judge(head + bytes(length))


def test_combining_two_pieces_is_the_crc_of_both():
    a, b = os.urandom(12345), os.urandom(777)
    assert file_crc.combine(judge(a), judge(b), len(b)) == judge(a + b)


def test_writes_in_any_order_with_holes_and_a_padded_tail():
    rng = random.Random(4)
    size = 300_000
    pieces = [(offset, os.urandom(rng.randrange(1, 5000))) for offset in range(0, size - 5000, 20_000)]
    tail = os.urandom(4096)                              # the last block, padded past the end
    image = bytearray(size)
    for offset, data in pieces:
        image[offset:offset + len(data)] = data
    image[size - 100:] = tail[:100]
    crc = FileCRC()
    crc.limit = size                                     # the writer truncates the file there
    for offset, data in pieces[1:] + [(size - 100, tail)] + pieces[:1]:   # the first piece (a header) comes last
        crc.add(offset, data)
    assert crc.value(size) == f"{judge(bytes(image)):08x}"


def test_the_value_is_the_crc_of_the_file_on_disk(tmp_path):
    size = 1 << 20
    path = tmp_path / "f"
    crc = FileCRC()
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (4096 * 7, 0, 4096 * 100, size - 4096):
            data = os.urandom(4096)
            f.seek(offset)
            f.write(data)
            crc.add(offset, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        on_disk = file_crc.of_file(fd, size)
    finally:
        os.close(fd)
    assert crc.value(size) == on_disk == f"{judge(path.read_bytes()):08x}"


def test_overlapping_writes_are_refused():
    crc = FileCRC()
    crc.add(100, b"x" * 10)
    crc.add(50, b"y" * 60)
    with pytest.raises(ValueError, match="overlap"):
        crc.value(200)
