"""The backup file formats, as plain stream code that knows nothing of Ceph or libvirt.

``raw`` (a sparse file), ``qcow2`` (version 3, written by virtrbd), ``rbddiff``
(the ``rbd diff v1`` stream of an incremental), ``manifest`` (the JSON beside
every backup file) and ``checksum`` (what a manifest records of the content).

``FORMAT_TABLE`` is the one table of what each format needs: how its file's
structure is checked, and for the formats that hold a whole image how it is
written and read back.  Code above asks the table instead of testing the
format's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, cast

from ...errors import CorruptBackupError, UsageError
from ..block_writer import Blocks, BlockWriter
from ..files import open_regular_stream, regular_size
from ..sealing.plain import plain_stream
from .manifest import DIFF_FORMAT, Manifest
from .qcow2 import Qcow2Writer
from .qcow2_reader import Qcow2Reader
from .raw import RawReader, RawWriter
from .rbddiff import DiffReader

#: ``(offset, data, extents)`` of a chunk of a full backup: ``extents`` are the ``(start, end)`` ranges
#: of ``data`` that hold the image's data, in absolute offsets
#: a chunk of a full backup's content: its offset, and its data as ``(offset, bytes)`` parts (sorted,
#: disjoint, within the chunk); the chunk's other bytes are zeros
DataChunk = tuple[int, list[tuple[int, Any]]]


@dataclass(frozen=True)
class Format:
    """A backup format: how its file's structure is checked (every link of a chain, before any data)."""

    name: str
    check_structure: Callable[[Manifest], None]


@dataclass(frozen=True)
class FullFormat(Format):
    """A format that holds a whole image: written from a snapshot's data, read back chunk by chunk."""

    writer: Callable[[Blocks, int, int], Any]                      # (blocks, image size, cluster size)
    reader: Callable[[Manifest], AbstractContextManager[Any]]
    chunks: Callable[[Any], Iterator[DataChunk]]                   # (an open reader)


def _no_structure(_m: Manifest) -> None:
    """A RAW file has no structure beyond its size, which ``check_backup_file`` checked."""


def identities_of(m: Manifest) -> list | None:
    """What opens the backup file: None for a file in the clear, the identities given for an encrypted one."""
    if m.encryption is None:
        return None
    if not m.identities:
        raise UsageError(f"{m.data_path}: encrypted (age, to {len(m.encryption['recipients'])} recipient(s)): "
                         f"give the identity that opens it (--identity FILE)")
    return m.identities


def plain_size(m: Manifest) -> int:
    """The size of what the formats read: the file, or the plaintext of an encrypted one."""
    return m.file_size if m.encryption is None else m.encryption["plain_size"]


def open_stream(m: Manifest, buffering: int = 1 << 20):
    """A backup file's bytes in order: its own, or an encrypted one's plaintext (each chunk authenticated)."""
    identities = identities_of(m)
    if identities is None:
        return open_regular_stream(m.data_path, buffering=buffering)
    return plain_stream(m.data_path, identities, buffering=buffering)


def _check_qcow2(m: Manifest) -> None:
    with Qcow2Reader(m.data_path, expected_size=m.size, identities=identities_of(m)) as reader:
        if reader.cluster_size != m.cluster_size:
            raise CorruptBackupError(f"{m.data_path}: cluster size {reader.cluster_size}, the manifest says "
                                     f"{m.cluster_size}")
        reader.validate()


def _qcow2_chunks(reader: Qcow2Reader) -> Iterator[DataChunk]:
    for offset, data in reader.chunks():
        yield offset, [(offset, data)]


def _check_diff(m: Manifest) -> None:
    with open_stream(m, buffering=256 << 10) as f:
        reader = DiffReader(f, str(m.data_path), file_size=plain_size(m))
        check_diff_header(reader, m)
        for _ in reader.records(with_data=False):
            pass


FULL_FORMATS: dict[str, FullFormat] = {
    "raw": FullFormat("raw", _no_structure,
                      # never encrypted (plan_backup refuses): a RAW file is written through a BlockWriter
                      writer=lambda blocks, size, _cluster_size: RawWriter(cast(BlockWriter, blocks), size),
                      reader=lambda m: RawReader(m.data_path, expected_size=m.size),
                      chunks=lambda reader: reader.chunks()),
    "qcow2": FullFormat("qcow2", _check_qcow2,
                        writer=lambda blocks, size, cluster_size: Qcow2Writer(blocks, size, cluster_size),
                        reader=lambda m: Qcow2Reader(m.data_path, expected_size=m.size,
                                                     identities=identities_of(m)),
                        chunks=_qcow2_chunks),
}
FORMAT_TABLE: dict[str, Format] = {**FULL_FORMATS, DIFF_FORMAT: Format(DIFF_FORMAT, _check_diff)}


def full_format(m: Manifest) -> FullFormat:
    """The table entry of a full backup's format (a manifest's format was checked when it was loaded)."""
    return FULL_FORMATS[m.format]


def check_backup_file(m: Manifest) -> None:
    """The file exists, has the recorded size, and its structure holds (no data hashed but an encrypted
    file's head: its age header and first chunk, where a file from another backup differs)."""
    check_file_size(m)
    if m.encryption is not None:
        check_sealed_part(m, "head")
    FORMAT_TABLE[m.format].check_structure(m)


def check_sealed_part(m: Manifest, part: str) -> None:
    """An encrypted file's ``head`` (its first ``head_bytes``) or ``rest`` has the SHA-256 its manifest
    records: checked without the identity."""
    e = m.encryption or {}
    start, end = (0, e["head_bytes"]) if part == "head" else (e["head_bytes"], m.file_size)
    digest = hashlib.sha256()
    with open_regular_stream(m.data_path, buffering=0) as f:
        f.seek(start)
        for offset in range(start, end, 1 << 20):
            digest.update(f.read(min(1 << 20, end - offset)))
    if digest.hexdigest() != e[f"{part}_sha256"]:
        where = "its age header or first chunk" if part == "head" else "its encrypted data after that"
        raise CorruptBackupError(f"{m.data_path}: {where} changed: SHA-256 {digest.hexdigest()[:16]}…, "
                                 f"the manifest says {e[f'{part}_sha256'][:16]}…")


def check_file_size(m: Manifest) -> None:
    """The file is there, a regular file of the recorded size (what a listing checks of every backup)."""
    path = m.data_path
    try:
        actual = regular_size(path)
    except FileNotFoundError:
        raise CorruptBackupError(f"{path}: the backup file is missing (its manifest is there)") from None
    if actual != m.file_size:
        kind = "truncated" if actual < m.file_size else "longer than recorded"
        raise CorruptBackupError(f"{path}: {kind}: {actual} bytes, the manifest says {m.file_size}")


def check_diff_header(reader: DiffReader, m: Manifest) -> None:
    """The diff goes between the snapshots, and ends at the size, its manifest names."""
    h = reader.header
    if (h.from_snapshot, h.to_snapshot, h.size) != (m.from_snapshot, m.snapshot, m.size):
        raise CorruptBackupError(
            f"{m.data_path}: the diff goes from @{h.from_snapshot} to @{h.to_snapshot} ({h.size} bytes), its "
            f"manifest says @{m.from_snapshot} to @{m.snapshot} ({m.size} bytes)")


def check_file_checksum(m: Manifest, value: str) -> None:
    """The file's bytes are the ones written (a manifest older than ``file_checksum`` passes: nothing to say)."""
    if m.file_checksum is not None and value != m.file_checksum["value"]:
        raise CorruptBackupError(f"{m.data_path}: checksum mismatch: the file's bytes have CRC-32C {value}, the "
                                 f"manifest says {m.file_checksum['value']} (changed after it was written)")


def check_checksum(m: Manifest, value: str) -> None:
    """The content's recomputed checksum is the one the manifest records."""
    if value != m.checksum["value"]:
        raise CorruptBackupError(f"{m.data_path}: checksum mismatch: the content hashes to {value[:16]}…, "
                                 f"the manifest says {m.checksum['value'][:16]}… (corrupt backup)")
