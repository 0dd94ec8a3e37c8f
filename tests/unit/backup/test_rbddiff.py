"""The rbd diff v1 stream: ours round-trips, Ceph's own 'rbd merge-diff' reads it, damage is refused."""

from __future__ import annotations

import io
import os
import subprocess

import pytest

from virtrbd.backup.formats.rbddiff import DiffReader, DiffWriter, Record
from virtrbd.errors import CorruptBackupError


def make(from_snapshot, to_snapshot, size, records) -> bytes:
    out = io.BytesIO()
    writer = DiffWriter(out, from_snapshot=from_snapshot, to_snapshot=to_snapshot, size=size)
    for kind, offset, value in records:
        if kind == "w":
            writer.data(offset, value)
        else:
            writer.zero(offset, value)
    writer.finish()
    return out.getvalue()


def read(data: bytes, **kw) -> tuple:
    reader = DiffReader(io.BytesIO(data), "d.rbddiff", file_size=len(data), **kw)
    return reader.header, list(reader.records())


def test_layout_is_the_documented_one():
    data = make("a", "bc", 1 << 20, [("w", 16, b"xy"), ("z", 4096, 512)])
    assert data == (b"rbd diff v1\n" + b"f\x01\0\0\0a" + b"t\x02\0\0\0bc" + b"s" + (1 << 20).to_bytes(8, "little")
                    + b"w" + (16).to_bytes(8, "little") + (2).to_bytes(8, "little") + b"xy"
                    + b"z" + (4096).to_bytes(8, "little") + (512).to_bytes(8, "little") + b"e")


def test_round_trip_with_pieces():
    payload = os.urandom(10_000)
    reader = DiffReader(io.BytesIO(make("s1", "s2", 1 << 30, [("w", 0, payload), ("z", 20_000, 5)])), "d")
    records = list(reader.records(piece=4096))
    assert (reader.header.from_snapshot, reader.header.to_snapshot, reader.header.size) == ("s1", "s2", 1 << 30)
    assert b"".join(r.data for r in records if r.kind == "w") == payload
    assert [r.offset for r in records if r.kind == "w"] == [0, 4096, 8192]
    assert records[-1] == Record("z", 20_000, 5)


def test_structure_walk_skips_data_and_still_sees_truncation():
    data = make("a", "b", 1 << 20, [("w", 0, b"x" * 1000)])
    reader = DiffReader(io.BytesIO(data), "d", file_size=len(data))
    assert [(r.kind, r.offset, r.length, r.data) for r in reader.records(with_data=False)] == [("w", 0, 1000, None)]
    cut = data[:-10]
    reader = DiffReader(io.BytesIO(cut), "d", file_size=len(cut))
    with pytest.raises(CorruptBackupError, match="truncated"):
        list(reader.records(with_data=False))


def test_every_truncation_is_caught_in_one_line():
    data = make("a", "b", 1 << 20, [("w", 0, b"x" * 100), ("z", 200, 10)])
    for keep in range(len(data)):
        with pytest.raises(CorruptBackupError) as exc:
            read(data[:keep])
        assert "\n" not in str(exc.value) and "d.rbddiff" in str(exc.value)


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.replace(b"rbd diff v1\n", b"rbd diff v2\n"), "v2"),
    (lambda d: b"not a diff at all" + d, "not an 'rbd diff v1' stream"),
    (lambda d: d[:-1] + b"q", "unknown or misplaced record tag"),
    (lambda d: d + b"junk", "follow the end record"),
])
def test_damage_is_refused(mutate, words):
    data = make("a", "b", 1 << 20, [("w", 0, b"x" * 100)])
    with pytest.raises(CorruptBackupError, match=words):
        read(mutate(data))


def test_records_beyond_the_image_are_refused():
    data = make(None, "b", 1 << 20, [])
    data = data[:-1] + b"w" + (1 << 20).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"x" + b"e"
    with pytest.raises(CorruptBackupError, match="beyond the image size"):
        read(data)


def test_a_stream_without_size_is_refused():
    with pytest.raises(CorruptBackupError, match="no image size"):
        read(b"rbd diff v1\n" + b"t\x01\0\0\0b" + b"e")


def test_writer_keeps_records_in_order_and_inside_the_image():
    writer = DiffWriter(io.BytesIO(), from_snapshot=None, to_snapshot="b", size=100)
    writer.data(10, b"x")
    with pytest.raises(ValueError):
        writer.data(5, b"y")
    with pytest.raises(ValueError):
        writer.zero(90, 20)


def test_ceph_reads_our_stream(tmp_path):
    """rbd merge-diff is Ceph's own parser and needs no cluster: merging two of our diffs must compose them."""
    first = make("a", "b", 1 << 20, [("w", 0, b"1" * 8192), ("z", 65536, 4096), ("w", 100_000, b"2" * 10)])
    second = make("b", "c", 1 << 20, [("w", 4096, b"3" * 100), ("w", 500_000, b"4" * 3)])
    (tmp_path / "first").write_bytes(first)
    (tmp_path / "second").write_bytes(second)
    result = subprocess.run(["rbd", "merge-diff", "--no-progress", "-c", "/dev/null", str(tmp_path / "first"),
                             str(tmp_path / "second"), str(tmp_path / "merged")],
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "CEPH_CONF"})
    assert result.returncode == 0, result.stderr
    header, records = read((tmp_path / "merged").read_bytes())
    assert (header.from_snapshot, header.to_snapshot, header.size) == ("a", "c", 1 << 20)
    image = bytearray(1 << 20)
    for record in records:
        image[record.offset:record.offset + record.length] = record.data or bytes(record.length)
    expected = bytearray(1 << 20)
    expected[0:8192] = b"1" * 8192
    expected[4096:4196] = b"3" * 100
    expected[100_000:100_010] = b"2" * 10
    expected[500_000:500_003] = b"4" * 3
    assert image == expected
    zeroed = [(r.offset, r.length) for r in records if r.kind == "z"]
    assert (65536, 4096) in zeroed
