"""Verifying a backup: its checksums recomputed against its manifest, and optionally against the live snapshot.

Two checks, both needed: the file's bytes as written (``file_checksum``: the
headers and tables a reader such as QEMU parses, not only the data), and the
image's content read back through virtrbd's own reader.  Needs no cluster
unless a snapshot is named.  A RAW file is the image as it is, so both come
from one read of its data (holes are never read); a QCOW2 file is read twice
(once whole for its CRC-32C, which runs in hardware and skips holes, once
through its format); an incremental once.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import replace

from ..ceph import Cluster, translated
from ..errors import BackupError, UsageError
from ..progress import Progress
from ..spec import ImageSpec
from .file_crc import FileCRC, of_file
from .files import open_regular
from .formats import (
    check_backup_file,
    check_checksum,
    check_file_checksum,
    check_file_size,
    check_sealed_part,
    full_format,
    identities_of,
    open_stream,
    plain_size,
)
from .formats.checksum import FILE_HASHES, BackgroundDigest, ContentDigest
from .formats.manifest import DIFF_FORMAT, Manifest
from .formats.rbddiff import DiffReader
from .rbd_io import MAX_OPS, READ_BYTES, WINDOW_BYTES, RbdSource
from .read_ahead import will_need, without_read_ahead
from .results import VerifyResult
from .sealing.plain import PlainFile
from .stream import CHUNK, is_zero, split_at
from .trust import Trust
from .window import read_chunks


def file_digest(m: Manifest, *, keep: bool = False,
                progress: Progress | None = None) -> tuple[str, list[bytes], int]:
    """Recompute a backup file's checksum: (value, per-chunk digests of a full backup, bytes read)."""
    check_backup_file(m)
    if m.format == DIFF_FORMAT:
        hashed, crc = FILE_HASHES[m.checksum["algorithm"]](), FileCRC()

        def seen(data) -> None:
            hashed.update(data)
            crc.add(crc.end, data)

        with open_stream(m) as f:
            reader = DiffReader(f, str(m.data_path), file_size=plain_size(m), on_bytes=seen)
            for _ in reader.records():
                if progress:
                    progress(reader.position, plain_size(m))
        check_file_checksum(m, crc.value(plain_size(m)))
        return hashed.hexdigest(), [], plain_size(m)
    # a RAW file holds the image byte for byte: its CRC comes from the reads that feed the content's digest
    raw_crc = FileCRC() if m.file_checksum is not None and m.format == "raw" and m.encryption is None else None
    if m.file_checksum is not None and raw_crc is None:
        check_file_checksum(m, _file_crc(m))
    read = 0
    fmt = full_format(m)
    with fmt.reader(m) as reader, BackgroundDigest(m.size, keep=keep,
                                                                algorithm=m.checksum["algorithm"]) as digest:
        for offset, parts in fmt.chunks(reader):
            digest.add_parts(offset // CHUNK, [(at - offset, data) for at, data in parts])
            for at, data in parts:
                read += len(data)
                if raw_crc is not None:
                    raw_crc.add(at, data)
            if progress:
                progress(min(offset + CHUNK, m.size), m.size)
        value = digest.hexdigest()
    if raw_crc is not None:
        check_file_checksum(m, raw_crc.value(m.file_size))
    return value, digest.digests or [], read


def _file_crc(m: Manifest) -> str:
    """CRC-32C of the file's bytes, or of an encrypted file's plaintext (what ``age -d`` gives back)."""
    identities = identities_of(m)
    if identities is None:
        fd = without_read_ahead(open_regular(m.data_path))
        try:
            return of_file(fd, m.file_size, will_need=will_need)
        finally:
            os.close(fd)
    crc, plain = FileCRC(), PlainFile(m.data_path, identities)
    try:
        offset = 0
        while offset < plain.size:
            data = plain.pread(CHUNK, offset)
            crc.add(offset, data)
            offset += len(data)
    finally:
        plain.close()
    return crc.value(plain.size)


def run_verify(m: Manifest, *, cluster: Cluster | None = None, against: ImageSpec | None = None,
               progress: Progress | None = None, trust: Trust | None = None) -> VerifyResult:
    """Check ``m``'s signature against ``trust``, then its file and content (or, for an encrypted file
    without its identity, every byte of the file against the signed SHA-256 digests)."""
    started = time.monotonic()
    signature = (trust or Trust()).authenticate(m)
    if m.encryption is not None and m.identities is None:
        if against is not None:
            raise UsageError(f"{m.data_path}: encrypted: comparing it with {against} needs --identity")
        return replace(_verify_sealed(m, started), signature=signature)
    value, chunk_digests, read = file_digest(m, keep=against is not None, progress=progress)
    check_checksum(m, value)
    if against is not None:
        assert cluster is not None, "verify against a snapshot is given a cluster (backup.verify checks it)"
        with cluster.image(against.pool, against.image, snapshot=against.snapshot, read_only=True) as image:
            source = RbdSource(image, str(against))
            if m.format == DIFF_FORMAT:
                read += _compare_diff(m, source)
            else:
                read += _compare_full(m, chunk_digests, source)
    return VerifyResult(file=m.data_path, kind=m.kind, format=m.format, image=f"{m.image}@{m.snapshot}",
                        checksum=value, checked_bytes=read, seconds=time.monotonic() - started,
                        against=str(against) if against else None,
                        judged="content" if m.file_checksum is None else "file and content", signature=signature)


def _verify_sealed(m: Manifest, started: float) -> VerifyResult:
    """An encrypted file checked without its identity: its size and the two SHA-256 digests of its bytes."""
    check_file_size(m)
    for part in ("head", "rest"):
        check_sealed_part(m, part)
    e = m.encryption or {}
    return VerifyResult(file=m.data_path, kind=m.kind, format=m.format, image=f"{m.image}@{m.snapshot}",
                        checksum=e["rest_sha256"], checked_bytes=m.file_size, seconds=time.monotonic() - started,
                        against=None, judged="encrypted file (its SHA-256 digests; the content needs --identity)")


def _compare_full(m: Manifest, chunk_digests: list[bytes], source: RbdSource) -> int:
    if source.size != m.size:
        raise BackupError(f"{m.data_path} holds {m.size} bytes, {source.what} has {source.size}")
    live = ContentDigest(source.size, keep=True, algorithm=m.checksum["algorithm"])
    read = 0
    with closing(read_chunks(source, source.size, window_bytes=WINDOW_BYTES, max_ops=MAX_OPS,
                             max_read=READ_BYTES)) as chunks:
        for chunk in chunks:
            live.add(chunk.index, chunk.data)
            read += chunk.length
    live.hexdigest()
    for index, (ours, theirs) in enumerate(zip(chunk_digests, live.digests or [], strict=False)):
        if ours != theirs:
            raise BackupError(f"{m.data_path} differs from {source.what} in the 4 MiB chunk at offset "
                              f"{index * CHUNK}")
    return read


def _compare_diff(m: Manifest, source: RbdSource) -> int:
    """Every changed extent the diff records holds what the snapshot holds there."""
    read = 0
    with open_stream(m) as f:
        reader = DiffReader(f, str(m.data_path), file_size=plain_size(m))
        if reader.header.size != source.size:
            raise BackupError(f"{m.data_path} ends at {reader.header.size} bytes, {source.what} has {source.size}")
        for record in reader.records():
            for offset, length in split_at(record.offset, record.length, CHUNK):
                with translated(f"reading {source.what} at {offset}"):
                    live = source.image.read(offset, length)
                data = record.data if record.kind == "w" else None
                expected = data[offset - record.offset:offset - record.offset + length] if data is not None else None
                if (expected is None and not is_zero(live)) or (expected is not None and live != expected):
                    raise BackupError(f"{m.data_path} differs from {source.what} at offset {offset}")
                read += length
    return read
