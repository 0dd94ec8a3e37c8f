"""QCOW2 (version 3) written by virtrbd itself, streamed, in bounded memory; and a validating reader.

The layout the writer produces (QEMU's docs/interop/qcow2.txt is the spec)::

    cluster 0                 header (written last)
    clusters 1..              guest data clusters in guest order, and after each 512 MiB of guest
                              space (one L2 table's reach with 64 KiB clusters) that table itself
    then                      the L1 table, the refcount blocks, the refcount table

The header's virtual size is the image's size rounded up to 512 bytes: QEMU
rounds a QCOW2's size down to whole sectors, so an image of odd size would lose
its last bytes in ``qemu-img``; rounded up, every byte is visible there, with
zeros after the end.  The manifest keeps the exact size, and virtrbd's reader,
given it, reads exactly that many bytes.

Only clusters holding a non-zero byte are allocated; the rest stay unallocated
(no backing file, so they read as zeros).  Every host cluster is used exactly
once, so every refcount is 1 and the refcount blocks are written in one go at
the end, sized so that they also count themselves and the table.  Memory: one
L2 table, the L1 table (8 bytes per 512 MiB) and the writer's buffers.

The reader accepts what restore needs: versions 2 and 3, any cluster size QEMU
accepts, no backing file, no encryption, no compressed clusters, no external
data file.  Every table entry is checked against the file before any data is
used, and a problem is one line naming the file and the offset.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ...errors import CorruptBackupError, UsageError
from ..files import BlockWriter, open_regular
from ..granules import Granules

MAGIC = b"QFI\xfb"
#: the version 3 header up to header_length (104 bytes), big-endian
HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = HEADER.size

COPIED = 1 << 63              # L1/L2: refcount is exactly 1
COMPRESSED = 1 << 62          # L2: compressed cluster
ZERO_FLAG = 1                 # L2 (v3): the cluster reads as zeros
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
REFCOUNT_ORDER = 4            # 16-bit refcounts, what QEMU writes by default

INCOMPATIBLE_DIRTY = 1 << 0
INCOMPATIBLE_CORRUPT = 1 << 1

DEFAULT_CLUSTER_SIZE = 64 << 10
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 12, 21   # 4 KiB (our O_DIRECT block) .. 2 MiB (QEMU's limit)


def virtual_size(size: int) -> int:
    """The size a QCOW2 file of a ``size``-byte image declares: rounded up to whole 512-byte sectors."""
    return -(-size // 512) * 512


def cluster_bits_for(cluster_size: int) -> int:
    bits = cluster_size.bit_length() - 1
    if cluster_size != 1 << bits or not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
        raise UsageError(f"invalid QCOW2 cluster size {cluster_size}: a power of two from 4 KiB to 2 MiB")
    return bits


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Qcow2Writer:
    """Guest data in increasing offset order in, a complete QCOW2 file out at ``finish``."""

    def __init__(self, out: BlockWriter, size: int, cluster_size: int = DEFAULT_CLUSTER_SIZE):
        self.out = out
        self.size = size
        self.virtual_size = virtual_size(size)
        self.cluster_bits = cluster_bits_for(cluster_size)
        self.cluster_size = cluster_size
        self.l2_bits = self.cluster_bits - 3
        self.l2_entries = 1 << self.l2_bits
        self.l1_size = _ceil_div(self.virtual_size, cluster_size * self.l2_entries)
        self._l1 = [0] * self.l1_size
        self._l2: bytearray | None = None
        self._l2_index = -1
        self._next_cluster = 1                     # cluster 0 is the header
        self.data_clusters = 0
        self.file_size = 0
        self._granules = Granules(cluster_size, self._data_run)

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        if offset + (end - start) > self.size:
            raise ValueError(f"write at {offset} of {end - start} bytes beyond the image size {self.size}")
        self._granules.write(offset, data, start, end)

    def _data_run(self, offset: int, data, start: int, end: int) -> None:
        clusters = (end - start) >> self.cluster_bits
        host = self._next_cluster << self.cluster_bits
        self.out.pwrite(host, data, start, end)
        self._next_cluster += clusters
        self.data_clusters += clusters
        guest = offset >> self.cluster_bits
        for k in range(clusters):
            self._map(guest + k, host + (k << self.cluster_bits))

    def _map(self, guest_cluster: int, host_offset: int) -> None:
        index = guest_cluster >> self.l2_bits
        if index != self._l2_index:
            self._flush_l2()
            self._l2_index = index
            self._l2 = bytearray(self.cluster_size)
        assert self._l2 is not None, "the table of a mapped cluster is open until its range completes"
        struct.pack_into(">Q", self._l2, (guest_cluster & (self.l2_entries - 1)) * 8, host_offset | COPIED)

    def _flush_l2(self) -> None:
        """The L2 table of the range just completed goes right after its data."""
        if self._l2 is None:
            return
        offset = self._allocate(1)
        self.out.pwrite(offset, self._l2)
        self._l1[self._l2_index] = offset | COPIED
        self._l2 = None

    def _allocate(self, clusters: int) -> int:
        offset = self._next_cluster << self.cluster_bits
        self._next_cluster += clusters
        return offset

    def finish(self) -> int:
        """Write the remaining tables and the header; return the file size."""
        self._granules.finish()
        self._flush_l2()
        cs = self.cluster_size
        l1_clusters = max(1, _ceil_div(self.l1_size * 8, cs))
        l1_offset = self._allocate(l1_clusters)
        l1 = bytearray(l1_clusters * cs)
        if self.l1_size:
            struct.pack_into(f">{self.l1_size}Q", l1, 0, *self._l1)
        self.out.pwrite(l1_offset, l1)

        # refcount blocks and table count every cluster, themselves included
        per_block = cs * 8 >> REFCOUNT_ORDER
        used = self._next_cluster
        blocks = table = 0
        while True:
            total = used + blocks + table
            need_blocks = _ceil_div(total, per_block)
            need_table = _ceil_div(need_blocks * 8, cs)
            if (need_blocks, need_table) == (blocks, table):
                break
            blocks, table = need_blocks, need_table
        blocks_offset = self._allocate(blocks)
        table_offset = self._allocate(table)
        total = self._next_cluster
        one = b"\x00\x01"
        for b in range(blocks):
            counted = min(per_block, total - b * per_block)
            self.out.pwrite(blocks_offset + b * cs, one * counted + bytes(cs - 2 * counted))
        refcount_table = bytearray(table * cs)
        struct.pack_into(f">{blocks}Q", refcount_table, 0, *(blocks_offset + b * cs for b in range(blocks)))
        self.out.pwrite(table_offset, refcount_table)

        header = bytearray(cs)
        HEADER.pack_into(header, 0, MAGIC, 3, 0, 0, self.cluster_bits, self.virtual_size, 0, self.l1_size, l1_offset,
                         table_offset, table, 0, 0, 0, 0, 0, REFCOUNT_ORDER, V3_HEADER_LENGTH)
        # an end-of-extensions marker (type 0, length 0) follows: the zeros of the rest of the cluster
        self.out.flush()
        self.out.pwrite(0, header)
        self.out.flush()
        self.file_size = total << self.cluster_bits
        return self.file_size


# --- reading ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    incompatible_features: int
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


class Qcow2Reader:
    """A QCOW2 file read in guest order; ``validate()`` checks every table without reading data."""

    def __init__(self, path: os.PathLike, expected_size: int | None = None):
        self.path = path
        self.fd = open_regular(path)
        try:
            self.file_size = os.fstat(self.fd).st_size
            self.header = self._read_header()
            if expected_size is not None and self.header.size not in (expected_size, virtual_size(expected_size)):
                self._fail(f"holds a {self.header.size}-byte image, the manifest says {expected_size}")
            h = self.header
            self.cluster_size = h.cluster_size
            self.l2_bits = h.cluster_bits - 3
            self.l2_entries = 1 << self.l2_bits
            self.size = h.size if expected_size is None else expected_size     # exact, also for an odd size
            self._l1 = self._read_l1()
            self._l2_cache: tuple[int, tuple[int, ...]] | None = None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Qcow2Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, what: str):
        raise CorruptBackupError(f"{self.path}: {what}")

    def _pread(self, length: int, offset: int, what: str) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            self._fail(f"truncated: {what} at {offset} ends past the end of the file ({self.file_size} bytes)")
        return data

    def _read_header(self) -> Header:
        raw = os.pread(self.fd, V3_HEADER_LENGTH, 0)
        if len(raw) < V2_HEADER_LENGTH or raw[:4] != MAGIC:
            self._fail("not a QCOW2 file (bad magic or too short)")
        raw = raw.ljust(V3_HEADER_LENGTH, b"\0")
        (_magic, version, backing_offset, _backing_size, cluster_bits, size, crypt, l1_size, l1_offset,
         rt_offset, rt_clusters, _snapshots, _snap_offset, incompatible, _compatible, _autoclear,
         _refcount_order, header_length) = HEADER.unpack(raw)
        if version not in (2, 3):
            self._fail(f"QCOW2 version {version} is not supported (2 or 3)")
        if version == 3 and header_length < V3_HEADER_LENGTH:
            self._fail(f"header length {header_length} is too short for version 3")
        if not 9 <= cluster_bits <= MAX_CLUSTER_BITS:
            self._fail(f"invalid cluster_bits {cluster_bits}")
        if backing_offset:
            self._fail("has a backing file: restore needs a self-contained image")
        if crypt:
            self._fail("is encrypted: not supported")
        if version == 3:
            if incompatible & INCOMPATIBLE_CORRUPT:
                self._fail("is marked corrupt by QEMU")
            unknown = incompatible & ~INCOMPATIBLE_DIRTY
            if unknown:
                self._fail(f"uses incompatible features {unknown:#x} (external data file, extended L2, "
                           f"compression type…): not supported")
        else:
            incompatible = 0
        cluster_size = 1 << cluster_bits
        per_l1 = cluster_size * (cluster_size // 8)
        if l1_size < _ceil_div(size, per_l1):
            self._fail(f"L1 table of {l1_size} entries cannot map {size} bytes")
        if l1_size and (l1_offset % cluster_size or l1_offset == 0):
            self._fail(f"L1 table offset {l1_offset} is not cluster-aligned")
        if not rt_clusters or rt_offset % cluster_size or rt_offset + rt_clusters * cluster_size > self.file_size:
            self._fail(f"truncated or corrupt: the refcount table ({rt_clusters} clusters at {rt_offset}) is not "
                       f"inside the file ({self.file_size} bytes)")
        return Header(version, cluster_bits, size, l1_size, l1_offset, incompatible, rt_offset, rt_clusters)

    def _read_l1(self) -> tuple[int, ...]:
        needed = _ceil_div(self.size, self.cluster_size * self.l2_entries)
        if not needed:
            return ()
        raw = self._pread(needed * 8, self.header.l1_table_offset, "the L1 table")
        l1 = struct.unpack(f">{needed}Q", raw)
        for index, entry in enumerate(l1):
            offset = entry & OFFSET_MASK
            if entry & ~(OFFSET_MASK | COPIED):
                self._fail(f"L1 entry {index} has reserved bits set ({entry:#x})")
            if offset and (offset % self.cluster_size or offset + self.cluster_size > self.file_size):
                self._fail(f"truncated or corrupt: L1 entry {index} points to {offset}, outside the file "
                           f"({self.file_size} bytes)")
        return l1

    def _l2(self, index: int) -> tuple[int, ...] | None:
        """L2 table ``index``, validated; None when unallocated."""
        if self._l2_cache and self._l2_cache[0] == index:
            return self._l2_cache[1]
        offset = self._l1[index] & OFFSET_MASK
        if not offset:
            return None
        raw = self._pread(self.cluster_size, offset, f"L2 table {index}")
        table = struct.unpack(f">{self.l2_entries}Q", raw)
        first_guest = index << self.l2_bits
        for k, entry in enumerate(table):
            if not entry:
                continue
            guest = (first_guest + k) << self.header.cluster_bits
            if guest >= self.size:
                if entry & ~COPIED & OFFSET_MASK:
                    self._fail(f"L2 table {index} maps a cluster beyond the image size")
                continue
            if entry & COMPRESSED:
                self._fail(f"compressed cluster at guest offset {guest}: not supported")
            host = entry & OFFSET_MASK
            if entry & ~(OFFSET_MASK | COPIED | ZERO_FLAG):
                self._fail(f"L2 entry for guest offset {guest} has reserved bits set ({entry:#x})")
            if host:
                needed = min(self.cluster_size, self.size - guest)
                if host % self.cluster_size:
                    self._fail(f"data cluster for guest offset {guest} at {host} is not cluster-aligned")
                if host + needed > self.file_size:
                    self._fail(f"truncated: the data cluster for guest offset {guest} lies at {host}, past the "
                               f"end of the file ({self.file_size} bytes)")
        self._l2_cache = (index, table)
        return table

    def _check_refcount_blocks(self) -> None:
        """Every refcount block the table names lies inside the file (a cut-off tail shows here)."""
        h = self.header
        count = h.refcount_table_clusters * self.cluster_size // 8
        table = struct.unpack(f">{count}Q", self._pread(count * 8, h.refcount_table_offset, "the refcount table"))
        for index, entry in enumerate(table):
            if entry and (entry % self.cluster_size or entry + self.cluster_size > self.file_size):
                self._fail(f"truncated or corrupt: refcount block {index} at {entry} is not inside the file "
                           f"({self.file_size} bytes)")

    def validate(self) -> int:
        """Check every table (L1, L2, refcount); return the number of data clusters."""
        self._check_refcount_blocks()
        clusters = 0
        for index in range(len(self._l1)):
            table = self._l2(index)
            if table:
                clusters += sum(1 for e in table if e & OFFSET_MASK)
        return clusters

    def allocated(self, offset: int, length: int) -> Iterator[tuple[int, int, int | None]]:
        """``(guest_offset, length, host_offset)`` runs in the range with data (host None: zero clusters)."""
        cs = self.cluster_size
        end = min(offset + length, self.size)
        guest = offset - offset % cs
        run: list | None = None
        while guest < end:
            index = guest >> self.header.cluster_bits
            table = self._l2(index >> self.l2_bits)
            entry = table[index & (self.l2_entries - 1)] if table else 0
            host = entry & OFFSET_MASK
            length_here = min(cs, self.size - guest)
            if host or entry & ZERO_FLAG:
                host_value = host or None
                if run and run[2] is not None and host_value is not None and run[0] + run[1] == guest \
                        and run[2] + run[1] == host_value:
                    run[1] += length_here
                elif run and run[2] is None and host_value is None and run[0] + run[1] == guest:
                    run[1] += length_here
                else:
                    if run:
                        yield tuple(run)
                    run = [guest, length_here, host_value]
            guest += cs
        if run:
            yield tuple(run)

    def chunks(self, chunk: int = 4 << 20) -> Iterator[tuple[int, bytes | bytearray]]:
        """``(offset, data)`` for each ``chunk``-aligned piece of the image holding data, in order.

        Ranges whose L1 entry is empty are skipped without looking at them.
        """
        per_l2 = self.cluster_size * self.l2_entries
        offset = 0
        while offset < self.size:
            if not self._l1[offset // per_l2] & OFFSET_MASK and per_l2 >= chunk:
                offset = (offset // per_l2 + 1) * per_l2
                continue
            length = min(chunk, self.size - offset)
            data = self.read_chunk(offset, length)
            if data is not None:
                yield offset, data
            offset += length

    def read_chunk(self, offset: int, length: int) -> bytes | bytearray | None:
        """The guest bytes ``[offset, offset+length)``; None when no cluster in the range holds data."""
        buf = None
        for guest, run_length, host in self.allocated(offset, length):
            if host is None:
                continue
            if buf is None:
                buf = bytearray(length)
            start = max(guest, offset)
            stop = min(guest + run_length, offset + length)
            want = stop - start
            got = os.preadv(self.fd, [memoryview(buf)[start - offset:stop - offset]], host + (start - guest))
            if got != want:
                self._fail(f"truncated: data for guest offset {start} ends past the end of the file")
        return buf
