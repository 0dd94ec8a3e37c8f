"""The checksum of an image's logical content, cheap to recompute for huge, mostly empty images.

Definition (``sha256-of-4MiB-chunk-sha256``, recorded in every full backup's manifest)::

    n       = ceil(size / 4 MiB)                         (0 for an empty image)
    chunk_i = content[i * 4 MiB : min((i + 1) * 4 MiB, size)]   (holes read as zeros)
    value   = SHA-256( SHA-256(chunk_0) || SHA-256(chunk_1) || ... || SHA-256(chunk_n-1) )

written as 64 lowercase hex digits.  The digest of an all-zero chunk is computed
once, so a chunk the allocation map calls empty costs nothing, and an allocated
chunk of zeros costs a memcmp instead of a hash.  The same value comes out of an
RBD snapshot, a RAW file and a QCOW2 file holding the same bytes, which is what
``verify --against`` compares.  It can be reproduced from a RAW file with standard tools:
``split -b 4M -d image c. && sha256sum c.* | cut -c1-64 | xxd -r -p | sha256sum``.
"""

from __future__ import annotations

import collections
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor

import google_crc32c

from ..stream import CHUNK, is_zero, zeros

ALGORITHM = "sha256-of-4MiB-chunk-sha256"

_zero_digests: dict[int, bytes] = {}


def zero_digest(length: int) -> bytes:
    """SHA-256 of ``length`` zero bytes (computed once per length: the full chunk, the image's tail)."""
    digest = _zero_digests.get(length)
    if digest is None:
        digest = _zero_digests[length] = hashlib.sha256(zeros(length)).digest()
    return digest


class ContentDigest:
    """Accumulates per-chunk digests in order; chunks never added are zeros."""

    def __init__(self, size: int, chunk_size: int = CHUNK, *, keep: bool = False):
        self.size = size
        self.chunk_size = chunk_size
        self.count = -(-size // chunk_size)
        self._outer = hashlib.sha256()
        self._next = 0
        self.hashed_bytes = 0
        #: every chunk digest, when ``keep`` (to say where two images first differ)
        self.digests: list[bytes] | None = [] if keep else None

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def add(self, index: int, data: bytes | bytearray | None) -> bytes:
        """Chunk ``index`` holds ``data`` (its full length); None means all zeros.  Returns its digest."""
        if not self._next <= index < self.count:
            raise ValueError(f"chunk {index} out of order (expected {self._next}..{self.count - 1})")
        self._zeros_until(index)
        length = self.chunk_length(index)
        if data is None or is_zero(data):
            digest = zero_digest(length)
        else:
            if len(data) != length:
                raise ValueError(f"chunk {index} holds {len(data)} bytes, expected {length}")
            digest = hashlib.sha256(data).digest()
            self.hashed_bytes += length
        self._append(digest)
        return digest

    def add_digest(self, index: int, digest: bytes, hashed: int = 0) -> None:
        """Chunk ``index`` has this digest, computed elsewhere."""
        if not self._next <= index < self.count:
            raise ValueError(f"chunk {index} out of order (expected {self._next}..{self.count - 1})")
        self._zeros_until(index)
        self.hashed_bytes += hashed
        self._append(digest)

    def _zeros_until(self, index: int) -> None:
        while self._next < index:
            self._append(zero_digest(self.chunk_length(self._next)))

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

    Recorded beside the SHA-256 value (``checksum.data_crc32c``) so that a
    restore can check every byte it writes almost for free: SHA-256 runs at
    ~1.7 GB/s here and cost a restore its race with ``rbd import`` (which checks
    nothing) on a two-core machine, CRC-32C with the CPU's own instruction at
    ~20 GB/s.  What a restore guards against is a file damaged on secondary
    storage, which a CRC catches; ``verify`` still recomputes the SHA-256.
    Chunks of zeros (holes) add nothing, so data turning into zeros, or zeros
    into data, changes the value.
    """

    def __init__(self) -> None:
        self.crc = 0

    def add(self, index: int, data: bytes | bytearray | None) -> None:
        if data is None or is_zero(data):
            return
        if not isinstance(data, bytes):
            data = bytes(data)                        # the C extension takes bytes only (a copy at ~10 GB/s)
        self.crc = google_crc32c.extend(google_crc32c.extend(self.crc, index.to_bytes(8, "little")), data)

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
    """A ``ContentDigest`` whose SHA-256 runs on a worker thread, overlapping the caller's I/O.

    hashlib releases the GIL while it hashes, so a restore reads the next chunk
    and submits its writes while the previous one is hashed (a restore gains;
    a backup, whose reads already overlap, does not).  At
    most ``pending`` chunks wait (memory stays bounded) and digests are folded
    in chunk order.  Use it in a ``with`` block: leaving joins the worker.
    """

    def __init__(self, size: int, chunk_size: int = CHUNK, *, pending: int = 2, keep: bool = False):
        self.digest = ContentDigest(size, chunk_size, keep=keep)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-hash")
        self._queue: collections.deque[tuple[int, Future, int]] = collections.deque()
        self._pending = pending

    def add(self, index: int, data: bytes | bytearray | None) -> None:
        length = self.digest.chunk_length(index)
        if data is not None and len(data) != length:
            raise ValueError(f"chunk {index} holds {len(data)} bytes, expected {length}")
        self._queue.append((index, self._pool.submit(_digest_or_none, data), length))
        while len(self._queue) > self._pending:
            self._fold_one()

    def _fold_one(self) -> None:
        index, future, length = self._queue.popleft()
        digest = future.result()
        self.digest.add_digest(index, digest or zero_digest(length), length if digest else 0)

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


def _digest_or_none(data) -> bytes | None:
    """SHA-256 of a chunk; None for an all-zero one (its digest is known)."""
    if data is None or is_zero(data):
        return None
    return hashlib.sha256(data).digest()
