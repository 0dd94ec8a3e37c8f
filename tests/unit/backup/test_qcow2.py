"""QCOW2 written by virtrbd, judged by qemu-img (check, compare, info, map, convert); and our reader."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from virtrbd.backup.block_writer import BlockWriter
from virtrbd.backup.files import AtomicFile
from virtrbd.backup.formats.qcow2 import Qcow2Writer
from virtrbd.backup.formats.qcow2_reader import Qcow2Reader
from virtrbd.backup.memory import MemorySource
from virtrbd.backup.stream import CHUNK
from virtrbd.backup.window import read_chunks
from virtrbd.errors import CorruptBackupError, UsageError

from .conftest import scattered

MiB = 1 << 20
GiB = 1 << 30


def write_qcow2(path: Path, source: MemorySource, cluster_size: int = 64 << 10, direct: bool = True) -> Path:
    with AtomicFile(path, direct=direct) as out:
        blocks = BlockWriter(out.fd, direct=out.direct)
        writer = Qcow2Writer(blocks, source.size, cluster_size)
        for chunk in read_chunks(source, source.size):
            for start, end in chunk.extents:
                writer.write(start, chunk.data, start - chunk.offset, end - chunk.offset)
        size = writer.finish()
        blocks.close()
        out.commit()
    assert path.stat().st_size == size
    return path


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)


def assert_clean(path: Path) -> None:
    result = qemu_img("check", "--output=json", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report.get("check-errors", 0) == 0 and report.get("corruptions", 0) == 0, report
    assert report.get("leaks", 0) == 0, report


def read_back(path: Path, size: int) -> bytes:
    with Qcow2Reader(path, expected_size=size) as reader:
        reader.validate()
        out = bytearray(size)
        for offset, data in reader.chunks():
            out[offset:offset + len(data)] = data
    return bytes(out)


IMAGES = {
    "empty": lambda: (bytes(8 * MiB), []),
    "full": lambda: (os.urandom(8 * MiB), None),
    "sparse": lambda: scattered(64 * MiB, seed=5),
    "one-byte-at-the-end": lambda: (bytes(CHUNK * 2 - 1) + b"\x01", [(CHUNK * 2 - 1, 1)]),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_qemu_img_finds_no_errors_and_the_same_content(tmp_path, name):
    content, extents = IMAGES[name]()
    source = MemorySource(content, extents)
    path = write_qcow2(tmp_path / "x.qcow2", source)
    assert_clean(path)
    reference = tmp_path / "ref.raw"
    reference.write_bytes(source.data)
    result = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(path), str(reference))
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr
    converted = tmp_path / "back.raw"
    assert qemu_img("convert", "-f", "qcow2", "-O", "raw", str(path), str(converted)).returncode == 0
    assert converted.read_bytes() == source.data


def test_header_is_version_3_with_64k_clusters_and_16_bit_refcounts(tmp_path):
    path = write_qcow2(tmp_path / "x.qcow2", MemorySource(*scattered(16 * MiB, seed=1)))
    info = json.loads(qemu_img("info", "--output=json", str(path)).stdout)
    assert info["format"] == "qcow2"
    assert info["cluster-size"] == 65536
    assert info["virtual-size"] == 16 * MiB
    assert info["format-specific"]["data"]["compat"] == "1.1"        # version 3
    assert info["format-specific"]["data"]["refcount-bits"] == 16
    assert "backing-filename" not in info


def test_unallocated_and_zero_clusters_stay_unallocated(tmp_path):
    size = 64 * MiB
    content = bytearray(size)
    content[3 * MiB:3 * MiB + 10] = b"x" * 10                 # one cluster
    content[40 * MiB:41 * MiB] = os.urandom(MiB)              # sixteen clusters
    source = MemorySource(bytes(content), [(0, 8 * MiB), (40 * MiB, MiB)])   # allocated zeros too
    path = write_qcow2(tmp_path / "x.qcow2", source)
    mapping = json.loads(qemu_img("map", "--output=json", str(path)).stdout)
    data = [(m["start"], m["length"]) for m in mapping if m["data"]]
    assert data == [(3 * MiB, 64 << 10), (40 * MiB, MiB)]
    # header + 17 data clusters + 1 L2 + 1 L1 + 1 refcount block + 1 refcount table
    assert path.stat().st_size == (1 + 17 + 4) * (64 << 10)


@pytest.mark.parametrize("cluster_size", [4 << 10, 64 << 10, 2 << 20])
def test_cluster_sizes(tmp_path, cluster_size):
    source = MemorySource(*scattered(24 * MiB, seed=cluster_size))
    path = write_qcow2(tmp_path / "x.qcow2", source, cluster_size)
    assert_clean(path)
    assert json.loads(qemu_img("info", "--output=json", str(path)).stdout)["cluster-size"] == cluster_size
    assert read_back(path, source.size) == source.data


def test_large_sparse_image_across_many_l2_tables_in_bounded_memory(tmp_path):
    size = 200 * GiB
    extents = [(k * 7 * GiB + 12345, 70000) for k in range(28)] + [(size - 5, 5)]
    content_pieces = {offset: os.urandom(length) for offset, length in extents}

    class Sparse:
        """A huge image without a huge buffer."""
        def __init__(self):
            self.size = size

        def extents(self, offset, length):
            return [(o, n) for o, n in extents if offset <= o < offset + length]

        def submit_read(self, offset, length, done):
            data = bytearray(length)
            for o, payload in content_pieces.items():
                lo, hi = max(o, offset), min(o + len(payload), offset + length)
                if lo < hi:
                    data[lo - offset:hi - offset] = payload[lo - o:hi - o]
            done(bytes(data), None)

    tracemalloc.start()
    path = tmp_path / "x.qcow2"
    with AtomicFile(path) as out:
        blocks = BlockWriter(out.fd, direct=out.direct)
        writer = Qcow2Writer(blocks, size)
        for chunk in read_chunks(Sparse(), size):
            for start, end in chunk.extents:
                writer.write(start, chunk.data, start - chunk.offset, end - chunk.offset)
        writer.finish()
        blocks.close()
        out.commit()
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 * MiB, peak             # window + one chunk + one L2 table; never the image
    assert_clean(path)
    with Qcow2Reader(path, expected_size=size) as reader:
        for offset, payload in content_pieces.items():
            base = offset - offset % CHUNK
            data = reader.read_chunk(base, min(CHUNK, size - base))
            assert data[offset - base:offset - base + len(payload)] == payload


def test_reader_reads_qemu_made_files_v2_and_v3(tmp_path):
    content, _ = scattered(20 * MiB, seed=9)
    raw = tmp_path / "in.raw"
    raw.write_bytes(content)
    for compat in ("0.10", "1.1"):
        made = tmp_path / f"q{compat}.qcow2"
        assert qemu_img("convert", "-O", "qcow2", "-o", f"compat={compat}", str(raw), str(made)).returncode == 0
        assert read_back(made, len(content)) == content


def test_our_reader_keeps_odd_sizes_exact(tmp_path):
    content = os.urandom(CHUNK + 1)
    path = write_qcow2(tmp_path / "x.qcow2", MemorySource(content))
    assert read_back(path, len(content)) == content


# --- damaged files ------------------------------------------------------------------------------------

def good_file(tmp_path: Path) -> tuple[Path, bytes]:
    content, extents = scattered(32 * MiB, seed=11)
    source = MemorySource(content, extents)
    return write_qcow2(tmp_path / "x.qcow2", source), source.data


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_truncated_file_is_refused_in_one_line(tmp_path):
    path, content = good_file(tmp_path)
    for keep in (50, 64 << 10, path.stat().st_size // 2, path.stat().st_size - 1):
        cut = tmp_path / "cut.qcow2"
        cut.write_bytes(path.read_bytes()[:keep])
        with pytest.raises(CorruptBackupError) as exc:
            with Qcow2Reader(cut, expected_size=len(content)) as reader:
                reader.validate()
                for _ in reader.chunks():
                    pass
        assert "cut.qcow2" in one_line(exc)


def test_not_a_qcow2_file(tmp_path):
    path = tmp_path / "x.qcow2"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(CorruptBackupError, match="not a QCOW2 file"):
        Qcow2Reader(path)


def test_l2_entry_outside_the_file(tmp_path):
    path, content = good_file(tmp_path)
    with Qcow2Reader(path) as reader:
        l2_offset = reader._l1[0] & 0x00FFFFFFFFFFFE00
    raw = bytearray(path.read_bytes())
    first = next(i for i in range(0, 65536, 8) if struct.unpack_from(">Q", raw, l2_offset + i)[0])
    struct.pack_into(">Q", raw, l2_offset + first, (1 << 63) | (1 << 40))
    path.write_bytes(raw)
    with pytest.raises(CorruptBackupError, match="past the end of the file"):
        with Qcow2Reader(path, expected_size=len(content)) as reader:
            reader.validate()


def test_compressed_clusters_are_refused(tmp_path):
    raw = tmp_path / "in.raw"
    raw.write_bytes(b"compressible " * (MiB // 13) + bytes(MiB))
    made = tmp_path / "c.qcow2"
    assert qemu_img("convert", "-c", "-O", "qcow2", str(raw), str(made)).returncode == 0
    with pytest.raises(CorruptBackupError, match="compressed cluster"):
        with Qcow2Reader(made) as reader:
            reader.validate()


def test_backing_files_are_refused(tmp_path):
    base = tmp_path / "base.qcow2"
    assert qemu_img("create", "-f", "qcow2", str(base), "1M").returncode == 0
    top = tmp_path / "top.qcow2"
    assert qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)).returncode == 0
    with pytest.raises(CorruptBackupError, match="backing file"):
        Qcow2Reader(top)


def test_size_must_match_the_manifest(tmp_path):
    path, content = good_file(tmp_path)
    with pytest.raises(CorruptBackupError, match="manifest says"):
        Qcow2Reader(path, expected_size=len(content) + 512)


def test_cluster_size_must_be_sane():
    with pytest.raises(UsageError, match="cluster size"):
        Qcow2Writer(None, 10, cluster_size=3000)
    with pytest.raises(UsageError, match="cluster size"):
        Qcow2Writer(None, 10, cluster_size=4 << 20)


# --- odd sizes: every byte visible to QEMU's tools, the exact size kept by the manifest ----------------------

class SparseSource:
    """An image of ``size`` bytes holding ``pieces`` (offset → bytes) and zeros elsewhere, never all in memory."""

    def __init__(self, size: int, pieces: dict[int, bytes]):
        self.size = size
        self.pieces = pieces

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [(o, len(d)) for o, d in sorted(self.pieces.items()) if o < offset + length and o + len(d) > offset]

    def submit_read(self, offset: int, length: int, done) -> None:
        data = bytearray(length)
        for o, piece in self.pieces.items():
            start, stop = max(o, offset), min(o + len(piece), offset + length)
            if start < stop:
                data[start - offset:stop - offset] = piece[start - o:stop - o]
        done(bytes(data), None)

    def sha256(self) -> str:
        import hashlib
        digest, at = hashlib.sha256(), 0
        for o, piece in sorted(self.pieces.items()):
            digest.update(bytes(o - at))
            digest.update(piece)
            at = o + len(piece)
        digest.update(bytes(self.size - at))
        return digest.hexdigest()


@pytest.mark.parametrize("size", [64 * MiB + 1, GiB + 511])
def test_an_odd_sized_image_is_whole_for_qemu_img_and_exact_for_our_restore(tmp_path, size):
    import hashlib

    source = SparseSource(size, {0: b"first sector".ljust(512, b"."), 40 * MiB: os.urandom(70000),
                                 size - 5: b"LAST!"})
    qcow2 = write_qcow2(tmp_path / "odd.qcow2", source)
    raw = tmp_path / "odd.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
        for offset, piece in source.pieces.items():
            f.seek(offset)
            f.write(piece)
    assert_clean(qcow2)
    compared = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw), str(qcow2))
    assert compared.returncode == 0, compared.stdout + compared.stderr          # "Images are identical."
    converted = tmp_path / "converted.raw"
    assert qemu_img("convert", "-O", "raw", str(qcow2), str(converted)).returncode == 0
    assert converted.stat().st_size == -(-size // 512) * 512
    with open(converted, "r+b") as f:
        f.truncate(size)                                   # to the size the manifest keeps
    digest = hashlib.sha256()
    with open(converted, "rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    assert digest.hexdigest() == source.sha256()
    with Qcow2Reader(qcow2, expected_size=size) as reader:                  # our restore reads the exact size
        assert reader.size == size
        reader.validate()
        offset, data = list(reader.chunks())[-1]
        assert offset + len(data) == size
        assert bytes(reader.read_chunk(size - 5, 5)) == b"LAST!"
