"""Reading a QCOW2 file for restore and verify: only what QEMU itself would accept, checked before any data.

The reader accepts what restore needs: versions 2 and 3, any cluster size QEMU
accepts, no backing file, no encryption, no compressed clusters, no external
data file, no internal snapshots.  ``validate()`` then holds the file to at
least what ``qemu-img check`` holds it to (``qcow2_check``): the header and
its extensions, every L1 and L2 entry, and every cluster's refcount against the
references to it.  A problem is one line naming the file and the offset, so
virtrbd never restores from, nor calls sound, a file QEMU would refuse.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce
from itertools import compress
from operator import or_

from ...errors import CorruptBackupError
from ..sealing.plain import PlainFile
from .qcow2 import (
    COMPRESSED,
    COPIED,
    HEADER,
    INCOMPATIBLE_CORRUPT,
    INCOMPATIBLE_DIRTY,
    MAGIC,
    MAX_CLUSTER_BITS,
    OFFSET_MASK,
    REFCOUNT_ORDER,
    V2_HEADER_LENGTH,
    V3_HEADER_LENGTH,
    ZERO_FLAG,
    ceil_div,
    virtual_size,
)
from .qcow2_check import check_extensions, check_refcounts

MAX_L1_ENTRIES = (32 << 20) // 8         # QEMU refuses a larger active L1 table ("Active L1 table too large")


def raw_byte(file: PlainFile, offset: int) -> int:
    data = file.pread(1, offset)
    return data[0] if data else 0


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
    header_length: int = V2_HEADER_LENGTH

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


class Qcow2Reader:
    """A QCOW2 file read in guest order; ``validate()`` checks every table without reading data."""

    def __init__(self, path: os.PathLike, expected_size: int | None = None, identities: list | None = None):
        self.path = path
        self.file = PlainFile(path, identities)         # an encrypted file: its plaintext
        try:
            self.file_size = self.file.size
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
        self.file.close()

    def __enter__(self) -> Qcow2Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, what: str):
        raise CorruptBackupError(f"{self.path}: {what}")

    def _pread(self, length: int, offset: int, what: str) -> bytes:
        data = self.file.pread(length, offset)
        if len(data) != length:
            self._fail(f"truncated: {what} at {offset} ends past the end of the file ({self.file_size} bytes)")
        return data

    def _read_header(self) -> Header:
        raw = self.file.pread(V3_HEADER_LENGTH, 0)
        if len(raw) < V2_HEADER_LENGTH or raw[:4] != MAGIC:
            self._fail("not a QCOW2 file (bad magic or too short)")
        raw = raw.ljust(V3_HEADER_LENGTH, b"\0")
        (_magic, version, backing_offset, _backing_size, cluster_bits, size, crypt, l1_size, l1_offset,
         rt_offset, rt_clusters, snapshots, snapshots_offset, incompatible, _compatible, autoclear,
         refcount_order, header_length) = HEADER.unpack(raw)
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
        if snapshots or snapshots_offset:
            self._fail(f"has internal snapshots ({snapshots}, table at {snapshots_offset}): not supported")
        if l1_size > MAX_L1_ENTRIES:
            self._fail(f"its L1 table of {l1_size} entries is larger than QEMU accepts ({MAX_L1_ENTRIES})")
        if version == 3:
            if incompatible & INCOMPATIBLE_CORRUPT:
                self._fail("is marked corrupt by QEMU")
            unknown = incompatible & ~INCOMPATIBLE_DIRTY
            if unknown:
                self._fail(f"uses incompatible features {unknown:#x} (external data file, extended L2, "
                           f"compression type…): not supported")
            if autoclear:
                self._fail(f"uses autoclear features {autoclear:#x} (bitmaps, a raw external data file): "
                           f"not supported")
            if refcount_order != REFCOUNT_ORDER:
                self._fail(f"refcount order {refcount_order}: only {REFCOUNT_ORDER} (16-bit refcounts) is supported")
            if header_length % 8 or header_length > 1 << cluster_bits:
                self._fail(f"header length {header_length} is not a multiple of 8 inside the first cluster")
            if header_length > V3_HEADER_LENGTH and raw_byte(self.file, V3_HEADER_LENGTH):
                self._fail("uses a compression type other than zlib: not supported")
        else:
            incompatible, header_length = 0, V2_HEADER_LENGTH
        cluster_size = 1 << cluster_bits
        per_l1 = cluster_size * (cluster_size // 8)
        if l1_size < ceil_div(size, per_l1):
            self._fail(f"L1 table of {l1_size} entries cannot map {size} bytes")
        if l1_size and (l1_offset % cluster_size or l1_offset == 0):
            self._fail(f"L1 table offset {l1_offset} is not cluster-aligned")
        if not rt_clusters or rt_offset % cluster_size or rt_offset + rt_clusters * cluster_size > self.file_size:
            self._fail(f"truncated or corrupt: the refcount table ({rt_clusters} clusters at {rt_offset}) is not "
                       f"inside the file ({self.file_size} bytes)")
        check_extensions(self._pread(cluster_size, 0, "the first cluster"), header_length, self._fail)
        return Header(version, cluster_bits, size, l1_size, l1_offset, incompatible, rt_offset, rt_clusters,
                      header_length)

    def _read_l1(self) -> tuple[int, ...]:
        """The L1 entries that map the image; any beyond them (QEMU reads all l1_size) must be empty."""
        needed = ceil_div(self.size, self.cluster_size * self.l2_entries)
        count = self.header.l1_size
        if not count:
            return ()
        raw = self._pread(count * 8, self.header.l1_table_offset, "the L1 table")
        whole = struct.unpack(f">{count}Q", raw)
        if any(whole[needed:]):
            self._fail(f"L1 entries past the image's {needed} are in use")
        l1 = whole[:needed]
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
        if not self._plainly_valid(index, table):
            self._check_entries(index, table)
        self._l2_cache = (index, table)
        return table

    def _plainly_valid(self, index: int, table: tuple[int, ...]) -> bool:
        """The checks of ``_check_entries`` on the whole table at once (a 16 GiB file's tables hold 262,144
        entries); False where any might fail, and ``_check_entries`` finds which."""
        in_use = list(filter(None, table))
        if not in_use:
            return True
        hosts = [entry & OFFSET_MASK for entry in in_use]
        inside = -(-self.size // self.cluster_size) - (index << self.l2_bits)     # entries inside the image
        return not (reduce(or_, in_use) & ~self._allowed_flags() or reduce(or_, hosts) % self.cluster_size
                    or max(hosts) + self.cluster_size > self.file_size or any(table[max(inside, 0):]))

    def _allowed_flags(self) -> int:
        """The bits an L2 entry may set: the offset, COPIED, and (version 3) the zero flag."""
        return OFFSET_MASK | COPIED | (ZERO_FLAG if self.header.version >= 3 else 0)

    def _check_entries(self, index: int, table: tuple[int, ...]) -> None:
        """Every entry of L2 table ``index`` in turn: the first fault is named."""
        first_guest = index << self.l2_bits
        allowed = self._allowed_flags()
        for k in compress(range(len(table)), table):          # the entries in use (most are not)
            entry = table[k]
            guest = (first_guest + k) << self.header.cluster_bits
            if entry & COMPRESSED:
                self._fail(f"compressed cluster at guest offset {guest}: not supported")
            if entry & ~allowed:
                self._fail(f"L2 entry for guest offset {guest} has reserved bits set ({entry:#x})")
            if guest >= self.size:
                if entry & ~COPIED:
                    self._fail(f"L2 table {index} maps a cluster beyond the image size")
                continue
            host = entry & OFFSET_MASK
            if host:
                needed = min(self.cluster_size, self.size - guest)
                if host % self.cluster_size:
                    self._fail(f"data cluster for guest offset {guest} at {host} is not cluster-aligned")
                if host + needed > self.file_size:
                    self._fail(f"truncated: the data cluster for guest offset {guest} lies at {host}, past the "
                               f"end of the file ({self.file_size} bytes)")

    def refcount_table(self) -> tuple[int, ...]:
        """The refcount table: where each refcount block lies (0: none), each checked to be inside the file."""
        h = self.header
        count = h.refcount_table_clusters * self.cluster_size // 8
        table = struct.unpack(f">{count}Q", self._pread(count * 8, h.refcount_table_offset, "the refcount table"))
        for index, entry in enumerate(table):
            if entry and (entry % self.cluster_size or entry + self.cluster_size > self.file_size):
                self._fail(f"truncated or corrupt: refcount block {index} at {entry} is not inside the file "
                           f"({self.file_size} bytes)")
        return table

    def validate(self) -> int:
        """Check every table and every refcount as ``qemu-img check`` would; return the number of data clusters."""
        l2_offsets, data_offsets = [], []
        for index, entry in enumerate(self._l1):
            table = self._l2(index)
            if table:
                l2_offsets.append((entry, entry & OFFSET_MASK))
                data_offsets += [(e, e & OFFSET_MASK) for e in filter(None, table) if e & OFFSET_MASK]
        check_refcounts(self, l2_offsets, data_offsets)
        return len(data_offsets)

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
            got = self.file.readinto(memoryview(buf)[start - offset:stop - offset], host + (start - guest))
            if got != want:
                self._fail(f"truncated: data for guest offset {start} ends past the end of the file")
        return buf
