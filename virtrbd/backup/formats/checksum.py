"""The checksum of an image's logical content, cheap to recompute for huge, mostly empty images.

Definition (``xxh3-128-of-4MiB-chunk-xxh3-128``, recorded in every full backup's manifest)::

    n       = ceil(size / 4 MiB)                         (0 for an empty image)
    chunk_i = content[i * 4 MiB : min((i + 1) * 4 MiB, size)]   (holes read as zeros)
    value   = H( H(chunk_0) || H(chunk_1) || ... || H(chunk_n-1) )

where H is XXH3-128 (its canonical, big-endian 16 bytes; the value is written as 32
lowercase hex digits).  The digest of an all-zero chunk is computed once, so a
chunk the allocation map calls empty costs nothing.  The same value comes out of
an RBD snapshot, a RAW file and a QCOW2 file holding the same bytes, which is what
``verify --against`` compares.  It can be reproduced from a RAW file with Debian's
``xxhash`` and coreutils:
``split -b 4M -d -a 8 image c. && xxhsum -H2 c.* | cut -c1-32 | xxd -r -p | xxhsum -H2``.

Backups written before it carry ``sha256-of-4MiB-chunk-sha256`` (the same
definition with SHA-256) and a CRC-32C of their data (``DataCRC``); both still
verify.  XXH3-128 replaced SHA-256 because hashing was the largest cost of a
backup (docs/performance.md): it runs ~10x faster here, and what the checksum
guards against is damage, which a 128-bit hash of this quality catches; an
unsigned manifest gives no protection against tampering whatever its hash.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import xxhash

from ... import crc32c
from ..stream import CHUNK, is_zero, zeros

SHA256_CHUNKS = "sha256-of-4MiB-chunk-sha256"
XXH3_CHUNKS = "xxh3-128-of-4MiB-chunk-xxh3-128"
ALGORITHM = XXH3_CHUNKS
#: the hash of each algorithm (for the chunks and over their digests) and the hex digits of its value
HASHES: dict[str, Callable] = {SHA256_CHUNKS: hashlib.sha256, XXH3_CHUNKS: xxhash.xxh3_128}
HEX_DIGITS = {SHA256_CHUNKS: 64, XXH3_CHUNKS: 32}

#: an incremental's checksum: a plain hash of the diff file (``xxhsum -H2 FILE`` gives it); older ones: SHA-256
DIFF_ALGORITHM = "xxh3-128"
FILE_HASHES: dict[str, Callable] = {"sha256": hashlib.sha256, "xxh3-128": xxhash.xxh3_128}
FILE_HEX_DIGITS = {"sha256": 64, "xxh3-128": 32}

_zero_digests: dict[tuple[str, int], bytes] = {}
_ZERO_CHUNK = memoryview(bytes(CHUNK))


def zero_digest(length: int, algorithm: str = ALGORITHM) -> bytes:
    """The digest of ``length`` zero bytes (computed once per length: the full chunk, the image's tail)."""
    digest = _zero_digests.get((algorithm, length))
    if digest is None:
        digest = _zero_digests[(algorithm, length)] = HASHES[algorithm](zeros(length)).digest()
    return digest


def _feed_zeros(h, count: int) -> None:
    """``count`` zero bytes into the hash ``h``, without allocating them."""
    while count > 0:
        step = min(count, len(_ZERO_CHUNK))
        h.update(_ZERO_CHUNK[:step])
        count -= step


def digest_of_parts(algorithm: str, length: int, parts: Iterable[tuple[int, bytes | bytearray | memoryview]]
                    ) -> bytes | None:
    """The digest of ``length`` bytes holding ``parts`` (``(start, data)``, sorted, disjoint) and zeros
    elsewhere; None when there are no parts (the zero digest, known)."""
    h, cursor = HASHES[algorithm](), 0
    for start, data in parts:
        if start < cursor or start + len(data) > length:
            raise ValueError(f"part at {start} of {len(data)} bytes is out of order or beyond {length} bytes")
        _feed_zeros(h, start - cursor)
        h.update(data)
        cursor = start + len(data)
    if not cursor:
        return None
    _feed_zeros(h, length - cursor)
    return h.digest()


class ContentDigest:
    """Accumulates per-chunk digests in order; chunks never added are zeros."""

    def __init__(self, size: int, chunk_size: int = CHUNK, *, algorithm: str = ALGORITHM, keep: bool = False):
        self.size = size
        self.chunk_size = chunk_size
        self.algorithm = algorithm
        self._hash = HASHES[algorithm]
        self.count = -(-size // chunk_size)
        self._outer = self._hash()
        self._next = 0
        self.hashed_bytes = 0
        #: every chunk digest, when ``keep`` (to say where two images first differ)
        self.digests: list[bytes] | None = [] if keep else None

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def add(self, index: int, data: bytes | bytearray | None) -> bytes:
        """Chunk ``index`` holds ``data`` (its full length); None means all zeros.  Returns its digest."""
        self._check(index)
        length = self.chunk_length(index)
        if data is None or is_zero(data):
            digest = zero_digest(length, self.algorithm)
        else:
            if len(data) != length:
                raise ValueError(f"chunk {index} holds {len(data)} bytes, expected {length}")
            digest = self._hash(data).digest()
            self.hashed_bytes += length
        self._append(digest)
        return digest

    def add_parts(self, index: int, parts: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> bytes:
        """Chunk ``index`` holds each ``(start, data)`` of ``parts`` (sorted, disjoint, ``start`` within the
        chunk) and zeros elsewhere: hashed piece by piece, never assembled into one buffer."""
        self._check(index)
        length = self.chunk_length(index)
        digest = digest_of_parts(self.algorithm, length, parts)
        if digest is None:
            digest = zero_digest(length, self.algorithm)
        else:
            self.hashed_bytes += length
        self._append(digest)
        return digest

    def add_digest(self, index: int, digest: bytes, hashed: int = 0) -> None:
        """Chunk ``index`` has this digest, computed elsewhere."""
        self._check(index)
        self.hashed_bytes += hashed
        self._append(digest)

    def _check(self, index: int) -> None:
        """Chunks come in order; the ones skipped are zeros."""
        if not self._next <= index < self.count:
            raise ValueError(f"chunk {index} out of order (expected {self._next}..{self.count - 1})")
        self._zeros_until(index)

    def _zeros_until(self, index: int) -> None:
        while self._next < index:
            self._append(zero_digest(self.chunk_length(self._next), self.algorithm))

    def _append(self, digest: bytes) -> None:
        self._outer.update(digest)
        if self.digests is not None:
            self.digests.append(digest)
        self._next += 1

    def hexdigest(self) -> str:
        """The value; the chunks not added so far count as zeros."""
        self._zeros_until(self.count)
        return self._outer.hexdigest()


class DataCRC:
    """CRC-32C over the index (8 bytes, little-endian) and the bytes of every chunk that holds data, in order.

    Backups recorded it beside their SHA-256 value (``checksum.data_crc32c``)
    while that was the content checksum, so that a restore could check every
    byte it writes at CRC speed; a restore of such a backup still checks it.
    Backups with the XXH3 checksum have no need of it: a restore recomputes
    the content checksum itself, at the same speed.
    Chunks of zeros (holes) add nothing, so data turning into zeros, or zeros
    into data, changes the value.
    """

    def __init__(self) -> None:
        self.crc = 0

    def add(self, index: int, data: bytes | bytearray | None) -> None:
        if data is None or is_zero(data):
            return
        self.crc = crc32c.extend(crc32c.extend(self.crc, index.to_bytes(8, "little")), data)

    def hexdigest(self) -> str:
        return f"{self.crc:08x}"


class BackgroundCRC:
    """A ``DataCRC`` computed on a worker thread, in chunk order, at most ``pending`` chunks behind.

    A restore spends most of its time waiting for writes to land; the CRC runs
    in that time instead of before the next write is sent (profiled: 0.43 s of
    CRC on the restore's own thread for 2 GiB, beside 2.5 s of waiting).
    """

    def __init__(self, *, pending: int = 2):
        self.crc = DataCRC()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-crc")
        self._queue: collections.deque[Future] = collections.deque()
        self._pending = pending

    def add(self, index: int, data: bytes | bytearray | None) -> None:
        self._queue.append(self._pool.submit(self.crc.add, index, data))   # one worker keeps the order
        while len(self._queue) > self._pending:
            self._queue.popleft().result()

    def hexdigest(self) -> str:
        while self._queue:
            self._queue.popleft().result()
        return self.crc.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue.clear()

    def __enter__(self) -> BackgroundCRC:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BackgroundDigest:
    """A ``ContentDigest`` whose hashing runs on a worker thread, overlapping the caller's I/O.

    hashlib and xxhash release the GIL while they hash large buffers, so a restore reads the next chunk
    and submits its writes while the previous one is hashed (a restore gains;
    a backup, whose reads already overlap, does not).  At
    most ``pending`` chunks wait (memory stays bounded) and digests are folded
    in chunk order.  Use it in a ``with`` block: leaving joins the worker.
    """

    def __init__(self, size: int, chunk_size: int = CHUNK, *, pending: int = 2, keep: bool = False,
                 algorithm: str = ALGORITHM):
        self.digest = ContentDigest(size, chunk_size, keep=keep, algorithm=algorithm)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-hash")
        self._queue: collections.deque[tuple[int, Future, int]] = collections.deque()
        self._pending = pending

    def add(self, index: int, data: bytes | bytearray | None) -> None:
        length = self.digest.chunk_length(index)
        if data is not None and len(data) != length:
            raise ValueError(f"chunk {index} holds {len(data)} bytes, expected {length}")
        self._queue.append((index, self._pool.submit(_digest_or_none, self.digest, data), length))
        while len(self._queue) > self._pending:
            self._fold_one()

    def add_parts(self, index: int, parts: list[tuple[int, bytes | bytearray | memoryview]]) -> None:
        """Chunk ``index`` holds ``parts`` (as ``ContentDigest.add_parts``), hashed on the worker."""
        length = self.digest.chunk_length(index)
        self._queue.append((index, self._pool.submit(digest_of_parts, self.digest.algorithm, length, parts), length))
        while len(self._queue) > self._pending:
            self._fold_one()

    def _fold_one(self) -> None:
        index, future, length = self._queue.popleft()
        digest = future.result()
        self.digest.add_digest(index, digest or zero_digest(length, self.digest.algorithm), length if digest else 0)

    def hexdigest(self) -> str:
        while self._queue:
            self._fold_one()
        return self.digest.hexdigest()

    @property
    def digests(self) -> list[bytes] | None:
        return self.digest.digests

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue.clear()

    def __enter__(self) -> BackgroundDigest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _digest_or_none(digest: ContentDigest, data) -> bytes | None:
    """The digest of a chunk; None for an all-zero one (its digest is known)."""
    if data is None or is_zero(data):
        return None
    return HASHES[digest.algorithm](data).digest()
