"""ChaCha20-Poly1305 on a thread of its own, so that it never slows the threads that hash.

OpenSSL's ChaCha20-Poly1305 for this machine's AVX-512 CPU leaves the upper
halves of the vector registers in use when it returns.  Until something
clears them, every legacy-SSE instruction the same thread runs pays for it:
XXH3 (Debian's libxxhash is built for SSE2), the CRC-32C's folding and
SHA-NI.  One 16-byte seal made XXH3 4.5x slower and SHA-256 1.15x slower
in that thread, for good, and a thread started from it inherits the state
(docs/performance.md, "Encrypted backups").  X25519, Ed25519, HKDF and the
hashes leave the state clean (measured the same way).

So every use of the AEAD, the header's stanzas included, goes through a
``CipherThread``: the thread that runs it does nothing else, and the threads
that read, hash and write are started from threads that never ran it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class CipherThread:
    """A single worker thread for the AEAD; its work runs in the order it is handed over."""

    def __init__(self, name: str, in_flight: int = 2):
        """``in_flight``: how many ``submit``-ted tasks may wait before ``submit`` waits for the oldest."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: deque[Future] = deque()
        self._in_flight = in_flight

    def call(self, function: Callable[..., Any], *args) -> Any:
        """``function(*args)`` on the thread, its result or its exception here."""
        return self._pool.submit(function, *args).result()

    def submit(self, function: Callable[..., Any], *args) -> None:
        """``function(*args)`` on the thread, not waited for; its exception is raised by a later
        ``submit`` or by ``drain``."""
        self._pending.append(self._pool.submit(function, *args))
        while len(self._pending) > self._in_flight:
            self._pending.popleft().result()

    def drain(self) -> None:
        """Wait for everything submitted; raise the first error."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Drop what has not started, wait for what runs, end the thread."""
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
