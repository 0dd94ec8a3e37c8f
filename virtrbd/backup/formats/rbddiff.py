"""The ``rbd diff v1`` stream of ``rbd export-diff`` / ``rbd import-diff`` (Ceph's doc/dev/rbd-diff.rst).

::

    "rbd diff v1\\n"
    'f' le32 len, name      from-snapshot (absent: the diff starts from nothing)
    't' le32 len, name      to-snapshot
    's' le64                the image size at the to-snapshot
    'w' le64 offset, le64 length, data      changed bytes
    'z' le64 offset, le64 length            bytes that read as zeros now
    'e'                                     end

Metadata records come before data records.  The writer emits them in that
order, data records in increasing offset order.  The reader validates as it
goes: unknown tags, records out of the image, a missing end, bytes after the
end and a stream cut short are each one-line ``CorruptBackupError``\\ s.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from ...errors import CorruptBackupError
from ..stream import CHUNK

HEADER = b"rbd diff v1\n"
_NAME_LEN = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EXTENT = struct.Struct("<QQ")
MAX_NAME = 4096


class DiffWriter:
    """Writes a diff stream to ``out`` (anything with ``write(bytes)``)."""

    def __init__(self, out, *, from_snapshot: str | None, to_snapshot: str, size: int):
        self.out = out
        self.size = size
        self.data_bytes = 0
        self.zero_bytes = 0
        self.records = 0
        self._end = 0
        out.write(HEADER)
        if from_snapshot is not None:
            self._name(b"f", from_snapshot)
        self._name(b"t", to_snapshot)
        out.write(b"s" + _U64.pack(size))

    def _name(self, tag: bytes, name: str) -> None:
        raw = name.encode()
        self.out.write(tag + _NAME_LEN.pack(len(raw)) + raw)

    def _check(self, offset: int, length: int) -> None:
        if offset < self._end or offset + length > self.size or length <= 0:
            raise ValueError(f"diff record at {offset} of {length} bytes is out of order or out of the image")
        self._end = offset + length
        self.records += 1

    def data(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        self._check(offset, end - start)
        self.out.write(b"w" + _EXTENT.pack(offset, end - start))
        self.out.write(memoryview(data)[start:end])
        self.data_bytes += end - start

    def zero(self, offset: int, length: int) -> None:
        self._check(offset, length)
        self.out.write(b"z" + _EXTENT.pack(offset, length))
        self.zero_bytes += length

    def finish(self) -> None:
        self.out.write(b"e")


@dataclass(frozen=True)
class DiffHeader:
    from_snapshot: str | None
    to_snapshot: str | None
    size: int
    data_offset: int          # where the first data record starts


@dataclass(frozen=True)
class Record:
    kind: str                  # "w" (data) or "z" (zeros)
    offset: int
    length: int
    data: bytes | None = None


class DiffReader:
    """Reads a diff stream from a binary file; every byte read is also given to ``on_bytes``."""

    def __init__(self, f: BinaryIO, name: str, *, file_size: int | None = None, on_bytes=None):
        self.f = f
        self.name = name
        self.file_size = file_size
        self.on_bytes = on_bytes
        self.position = 0
        self.header = self._read_header()

    def _fail(self, what: str) -> NoReturn:
        raise CorruptBackupError(f"{self.name}: {what}")

    def _read(self, length: int, what: str) -> bytes:
        data = self.f.read(length)
        if len(data) != length:
            self._fail(f"truncated: {what} at byte {self.position} is cut short")
        self.position += length
        if self.on_bytes is not None:
            self.on_bytes(data)
        return data

    def _read_name(self, what: str) -> str:
        (length,) = _NAME_LEN.unpack(self._read(4, what))
        if length > MAX_NAME:
            self._fail(f"{what} of {length} bytes: not a diff stream")
        try:
            return self._read(length, what).decode()
        except UnicodeDecodeError:
            self._fail(f"{what} is not valid UTF-8")

    def _read_header(self) -> DiffHeader:
        magic = self.f.read(len(HEADER))
        self.position = len(magic)
        if self.on_bytes is not None:
            self.on_bytes(magic)
        if magic != HEADER:
            if magic == b"rbd diff v2\n":
                self._fail("is an 'rbd diff v2' stream: only v1 (rbd export-diff's default) is supported")
            self._fail("not an 'rbd diff v1' stream" + (" (empty or truncated)" if len(magic) < len(HEADER) else ""))
        from_snapshot = to_snapshot = size = None
        while True:
            tag = self._read(1, "a record tag")
            if tag == b"f":
                from_snapshot = self._read_name("the from-snapshot name")
            elif tag == b"t":
                to_snapshot = self._read_name("the to-snapshot name")
            elif tag == b"s":
                (size,) = _U64.unpack(self._read(8, "the image size"))
            elif tag in (b"w", b"z", b"e"):
                break
            else:
                self._fail(f"unknown record tag {tag!r} at byte {self.position - 1}")
        if size is None:
            self._fail("has no image size record ('s')")
        self._pending_tag = tag
        return DiffHeader(from_snapshot, to_snapshot, size, self.position - 1)

    def records(self, *, with_data: bool = True, piece: int = CHUNK) -> Iterator[Record]:
        """The data records in file order; 'w' data comes in pieces of at most ``piece`` bytes.

        Without ``with_data`` the data is skipped with a seek (a structural check
        costs almost no I/O); then nothing is passed to ``on_bytes`` for it.
        """
        tag = self._pending_tag
        size = self.header.size
        while tag != b"e":
            if tag not in (b"w", b"z"):
                self._fail(f"unknown or misplaced record tag {tag!r} at byte {self.position - 1}")
            offset, length = _EXTENT.unpack(self._read(16, "a data record"))
            if offset + length > size:
                self._fail(f"record at {offset} of {length} bytes lies beyond the image size {size}")
            if tag == b"z":
                yield Record("z", offset, length)
            elif not with_data:
                if self.file_size is not None and self.position + length > self.file_size:
                    self._fail(f"truncated: data of the record at image offset {offset} is cut short")
                self.f.seek(length, 1)
                self.position += length
                yield Record("w", offset, length)
            else:
                done = 0
                while done < length:
                    take = min(piece, length - done)
                    yield Record("w", offset + done, take, self._read(take, "record data"))
                    done += take
            tag = self._read(1, "a record tag")
        if self.file_size is not None and self.position != self.file_size:
            self._fail(f"{self.file_size - self.position} bytes follow the end record")
        if self.file_size is None and self.f.read(1):
            self._fail("bytes follow the end record")
