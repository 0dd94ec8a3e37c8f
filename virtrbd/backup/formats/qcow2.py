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

The reader is ``qcow2_reader``.
"""

from __future__ import annotations

import struct

from ...errors import UsageError
from ..block_writer import Blocks
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


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Qcow2Writer:
    """Guest data in increasing offset order in, a complete QCOW2 file out at ``finish``."""

    def __init__(self, out: Blocks, size: int, cluster_size: int = DEFAULT_CLUSTER_SIZE):
        self.out = out
        self.size = size
        self.virtual_size = virtual_size(size)
        self.cluster_bits = cluster_bits_for(cluster_size)
        self.cluster_size = cluster_size
        self.l2_bits = self.cluster_bits - 3
        self.l2_entries = 1 << self.l2_bits
        self.l1_size = ceil_div(self.virtual_size, cluster_size * self.l2_entries)
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
        l1_clusters = max(1, ceil_div(self.l1_size * 8, cs))
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
            need_blocks = ceil_div(total, per_block)
            need_table = ceil_div(need_blocks * 8, cs)
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
