"""What ``qemu-img check`` holds a QCOW2 file to, held by virtrbd before it reads any data.

virtrbd's reader only needs the header and the L1/L2 tables to find the data;
QEMU also needs the header extensions to parse and every cluster's refcount to
match the references to it (a cluster counted once but used twice would be
freed while in use).  A file that passes here passes ``qemu-img check``; the
converse need not hold, since virtrbd refuses some valid shapes it never
writes and restore does not need (internal snapshots, bitmaps, refcounts
wider than 16 bits, a cluster shared by two users).

References counted, one per cluster: the header, the L1 table, each L2 table,
each data cluster, the refcount table and each refcount block.  Each must be
counted exactly once by the refcount blocks, every other cluster zero times,
and an L1 or L2 entry carries QEMU's COPIED flag exactly when its cluster's
refcount is 1.
"""

from __future__ import annotations

import struct

from .qcow2 import COPIED, OFFSET_MASK, ceil_div

#: header extension types QEMU knows (docs/interop/qcow2.txt); others are kept by QEMU and ignored here
EXTENSION_END = 0
REFUSED_EXTENSIONS = {0xE2792ACA: "a backing file format", 0x23852875: "persistent bitmaps",
                      0x0537BE77: "an encryption header", 0x44415441: "an external data file"}


def check_extensions(header_cluster: bytes, start: int, fail) -> None:
    """The header extensions after the header: each inside the first cluster, none that restore cannot honour."""
    offset, end = start, len(header_cluster)
    while offset + 8 <= end:
        kind, length = struct.unpack_from(">II", header_cluster, offset)
        if length > end - offset - 8:                # judged first, as QEMU does, even for the end marker
            fail(f"header extension {kind:#x} at {offset} runs past the first cluster ({length} bytes)")
        if kind == EXTENSION_END:
            return
        if kind in REFUSED_EXTENSIONS:
            fail(f"has {REFUSED_EXTENSIONS[kind]} (header extension {kind:#x}): not supported")
        offset += 8 + ceil_div(length, 8) * 8
    if offset != end:
        fail(f"header extensions end at {offset}, inside their last 8 bytes")


class References:
    """How many times each cluster of the file is used, refusing a second use."""

    def __init__(self, file_size: int, cluster_size: int, fail):
        self.cluster_size = cluster_size
        self.count = bytearray(ceil_div(file_size, cluster_size))
        self.fail = fail

    def use(self, offset: int, clusters: int, what: str) -> None:
        first = offset // self.cluster_size
        if first + clusters > len(self.count):
            self.fail(f"{what} at {offset} lies past the end of the file")
        for cluster in range(first, first + clusters):
            if self.count[cluster]:
                self.fail(f"{what} at {offset} uses cluster {cluster}, which is already in use")
            self.count[cluster] = 1

    def use_each(self, offsets: list[int], what: str) -> None:
        """``use(offset, 1, what)`` for each offset: checked all at once, one by one only to name a fault."""
        clusters = [offset // self.cluster_size for offset in offsets]
        if clusters and (max(clusters) >= len(self.count) or len(set(clusters)) != len(clusters)
                         or any(self.count[c] for c in clusters)):
            for offset in offsets:
                self.use(offset, 1, what)
        for cluster in clusters:
            self.count[cluster] = 1


def check_refcounts(reader, l2_offsets: list[tuple[int, int]], data_offsets: list[tuple[int, int]]) -> None:
    """Every cluster's stored refcount is the number of its users, and COPIED flags agree with them.

    ``l2_offsets`` and ``data_offsets`` are ``(table entry, host offset)`` pairs from the L1 and L2 tables.
    """
    h, cs, fail = reader.header, reader.cluster_size, reader._fail
    used = References(reader.file_size, cs, fail)
    used.use(0, 1, "the header")
    if h.l1_size:
        used.use(h.l1_table_offset, ceil_div(h.l1_size * 8, cs), "the L1 table")
    used.use(h.refcount_table_offset, h.refcount_table_clusters, "the refcount table")
    table = reader.refcount_table()
    for index, block in enumerate(table):
        if block:
            used.use(block, 1, f"refcount block {index}")
    used.use_each([host for _entry, host in l2_offsets], "an L2 table")
    used.use_each([host for _entry, host in data_offsets], "a data cluster")
    per_block = cs // 2                                   # 16-bit refcounts (the reader refuses others)
    expected = bytearray(cs)
    for index in range(max(len(table), ceil_div(len(used.count), per_block))):
        first = index * per_block
        users = used.count[first:first + per_block]
        block = table[index] if index < len(table) else 0
        if not block:
            if any(users):
                fail(f"clusters {first}..{first + per_block - 1} are in use but have no refcount block")
            continue
        stored = reader._pread(cs, block, f"refcount block {index}")
        expected[:] = bytes(cs)
        expected[1:2 * len(users):2] = users
        if stored != expected:
            at = next(k for k in range(0, cs, 2) if stored[k:k + 2] != expected[k:k + 2]) // 2
            refcount = int.from_bytes(stored[2 * at:2 * at + 2], "big")
            fail(f"cluster {first + at} has refcount {refcount} but {expected[2 * at + 1]} users "
                 f"(QEMU would call the file corrupt or leaking)")
    for entry, host in l2_offsets + data_offsets:
        if not entry & COPIED:
            fail(f"the table entry for the cluster at {host & OFFSET_MASK} lacks the COPIED flag of a "
                 f"cluster used once")
