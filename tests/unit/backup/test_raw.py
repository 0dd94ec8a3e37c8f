"""RAW backups: sparse files of exactly the image's size."""

from __future__ import annotations

import os

import pytest

from virtrbd.backup.block_writer import BlockWriter
from virtrbd.backup.files import AtomicFile
from virtrbd.backup.formats.raw import RawReader, RawWriter, data_extents
from virtrbd.backup.memory import MemorySource
from virtrbd.backup.stream import BLOCK, CHUNK
from virtrbd.backup.window import read_chunks
from virtrbd.errors import CorruptBackupError

from .conftest import scattered


def write_raw(path, source: MemorySource, direct: bool):
    with AtomicFile(path, direct=direct) as out:
        blocks = BlockWriter(out.fd, direct=out.direct)
        writer = RawWriter(blocks, source.size)
        for chunk in read_chunks(source, source.size):
            for start, end in chunk.extents:
                writer.write(start, chunk.data, start - chunk.offset, end - chunk.offset)
        writer.finish()
        blocks.close()
        out.commit()


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", [1, BLOCK - 1, CHUNK + 1, 3 * CHUNK + 4097])
def test_the_file_is_the_image_byte_for_byte(tmp_path, size, direct):
    content, extents = scattered(size, seed=size)
    extents.append((size - 1, 1))
    source = MemorySource(content, extents)
    path = tmp_path / "x.raw"
    write_raw(path, source, direct)
    assert path.stat().st_size == size
    assert path.read_bytes() == source.data


def test_holes_stay_holes(tmp_path):
    size = 64 * CHUNK
    content = bytearray(size)
    content[5 * CHUNK + 100:5 * CHUNK + 200] = b"x" * 100          # one block
    content[40 * CHUNK:40 * CHUNK + 3 * BLOCK] = b"y" * 3 * BLOCK   # three blocks
    source = MemorySource(bytes(content), [(5 * CHUNK, CHUNK), (40 * CHUNK, 2 * CHUNK)])  # allocated, mostly zeros
    path = tmp_path / "x.raw"
    write_raw(path, source, direct=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert list(data_extents(fd, size)) == [(5 * CHUNK, BLOCK), (40 * CHUNK, 3 * BLOCK)]
    finally:
        os.close(fd)
    assert path.stat().st_blocks * 512 == 4 * BLOCK


def test_an_empty_image_is_all_hole(tmp_path):
    path = tmp_path / "x.raw"
    write_raw(path, MemorySource(bytes(10 * CHUNK), []), direct=True)
    assert path.stat().st_size == 10 * CHUNK and path.stat().st_blocks == 0


def test_reader_gives_chunks_with_data_only(tmp_path):
    size = 6 * CHUNK
    content = bytearray(size)
    content[CHUNK + 10:CHUNK + 20] = b"a" * 10
    content[4 * CHUNK + CHUNK - 1] = 9
    path = tmp_path / "x.raw"
    write_raw(path, MemorySource(bytes(content)), direct=False)
    with RawReader(path, expected_size=size) as reader:
        chunks = list(reader.chunks())
    assert [offset for offset, _ in chunks] == [CHUNK, 4 * CHUNK]
    assert all(data == bytes(content[at:at + len(data)]) for _, parts in chunks for at, data in parts)
    assert [(at, len(data)) for at, data in chunks[0][1]] == [(CHUNK, BLOCK)]    # the holes are never read
    assert [(at, len(data)) for at, data in chunks[1][1]] == [(5 * CHUNK - BLOCK, BLOCK)]


def test_reader_refuses_a_file_of_the_wrong_size(tmp_path):
    path = tmp_path / "x.raw"
    path.write_bytes(b"x" * 100)
    with pytest.raises(CorruptBackupError, match="truncated: 100 bytes, the manifest says 200"):
        RawReader(path, expected_size=200)
