"""age v1 files (c2sp.org/age): a header that wraps a file key for X25519 recipients, then the payload in
64 KiB chunks of ChaCha20-Poly1305 — what Debian's ``age -d -i IDENTITY FILE`` decrypts.

Each chunk is sealed on its own, under a nonce made of its number and a flag
for the last chunk, so a writer may seal chunks in any order — a QCOW2 file's
header cluster is written last — provided each is sealed exactly once: two
different chunks under one nonce would give both away.  ``SealedFile`` takes
plaintext writes at offsets (whole chunks, or pieces that complete them), holds
back the highest chunk until it knows whether it is the last, and refuses a
second write to a sealed chunk.

What can be checked without the identity: two SHA-256 digests, one of the
header with the payload's nonce and first chunk (``head_sha256``), one of the
rest of the file (``rest_sha256``) — the first chunk is often sealed last, the
rest in order, so both are hashed as the file is written, never read back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import queue
import threading
from dataclasses import dataclass

from ...errors import CorruptBackupError, UsageError, VirtrbdError
from .cipher_thread import CipherThread
from .evp import TAG, ChunkCipher, pin
from .keys import Identity, Recipient
from .output import CachedOutput, DirectOutput

VERSION_LINE = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024
SEALED_CHUNK = CHUNK + TAG
NONCE = 16
X25519_INFO = b"age-encryption.org/v1/X25519"
MAX_HEADER = 64 * 1024
#: batches of chunks queued for the sealing thread, and of sealed chunks for the writer thread (2 MiB each)
IN_FLIGHT = 2
#: consecutive chunks handed to the sealing thread, and from it to the writer thread, at once (1 MiB)
BATCH = 16


@dataclass(frozen=True)
class Stanza:
    args: tuple[str, ...]
    body: bytes

    def render(self) -> bytes:
        text = _b64(self.body)
        lines = [text[i:i + 64] for i in range(0, len(text), 64)]
        if not lines or len(lines[-1]) == 64:
            lines.append("")                    # the body ends with a line shorter than 64 columns
        return ("-> " + " ".join(self.args) + "\n" + "".join(line + "\n" for line in lines)).encode()


@dataclass(frozen=True)
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    signed: bytes              # the header up to and including "---", what the MAC covers
    length: int                # bytes of the header, its final newline included


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str, what: str) -> bytes:
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise CorruptBackupError(f"age header: {what} is not base64") from None
    if _b64(data) != text:
        raise CorruptBackupError(f"age header: {what} is not canonical base64")
    return data


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 (RFC 5869) of 32 bytes, age's only length: one block of the expansion."""
    key = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(key, info + b"\x01", hashlib.sha256).digest()


def _seal_once(key: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 under a key used for this one message (nonce zero), as age's stanzas are."""
    cipher = ChunkCipher(key, True)
    try:
        out = bytearray(len(plaintext) + TAG)
        cipher.seal_into(bytes(12), plaintext, out, 0)
        return bytes(out)
    finally:
        cipher.close()


def _open_once(key: bytes, sealed: bytes) -> bytes | None:
    """The plaintext of a message sealed by ``_seal_once``; None when it does not authenticate."""
    cipher = ChunkCipher(key, False)
    try:
        out = bytearray(max(0, len(sealed) - TAG))
        return bytes(out) if cipher.open_into(bytes(12), sealed, len(sealed), out, 0) else None
    finally:
        cipher.close()


def chunk_nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


# --- the header ---------------------------------------------------------------------------------------

def wrap(file_key: bytes, recipient: Recipient) -> Stanza:
    ephemeral = Identity.generate()
    share = ephemeral.recipient.public
    try:
        shared = ephemeral.exchange(recipient.public)
    except ValueError:
        raise UsageError(f"backup recipient {recipient}: not a usable X25519 public key") from None
    wrap_key = hkdf(shared, share + recipient.public, X25519_INFO)
    return Stanza(("X25519", _b64(share)), _seal_once(wrap_key, file_key))


def make_header(file_key: bytes, recipients: list[Recipient]) -> bytes:
    if not recipients:
        raise UsageError("an encrypted backup needs at least one recipient")
    signed = VERSION_LINE + b"".join(wrap(file_key, r).render() for r in recipients) + b"---"
    mac = hmac.new(hkdf(file_key, b"", b"header"), signed, hashlib.sha256).digest()
    return signed + b" " + _b64(mac).encode() + b"\n"


def read_header(fd: int, what: str) -> Header:
    """The header at the start of the age file open at ``fd``; a CorruptBackupError in one line if malformed."""
    head = os.pread(fd, MAX_HEADER, 0)
    if not head.startswith(VERSION_LINE):
        raise CorruptBackupError(f"{what}: not an age-encryption.org/v1 file")
    at, stanzas = len(VERSION_LINE), list[Stanza]()
    while True:
        end = head.find(b"\n", at)
        if end < 0:
            raise CorruptBackupError(f"{what}: its age header is cut short or longer than {MAX_HEADER} bytes")
        line = head[at:end].decode("ascii", errors="replace")
        if line.startswith("---"):
            if len(line) != 47 or line[3] != " ":
                raise CorruptBackupError(f"{what}: its age header's MAC line is malformed")
            return Header(tuple(stanzas), _unb64(line[4:], "the MAC"), head[:at + 3], end + 1)
        if not line.startswith("-> ") or len(line.split(" ")) < 2 or "" in line.split(" ")[1:]:
            raise CorruptBackupError(f"{what}: its age header has a malformed line")
        args, body, at = tuple(line[3:].split(" ")), "", end + 1
        while True:
            end = head.find(b"\n", at)
            if end < 0:
                raise CorruptBackupError(f"{what}: its age header is cut short")
            piece = head[at:end].decode("ascii", errors="replace")
            at, body = end + 1, body + piece
            if len(piece) > 64:
                raise CorruptBackupError(f"{what}: its age header has a stanza line longer than 64 columns")
            if len(piece) < 64:
                break
        stanzas.append(Stanza(args, _unb64(body, "a stanza body")))


def unwrap(header: Header, identities: list[Identity], what: str) -> bytes:
    """The file key, from the first stanza one of ``identities`` opens; the header's MAC checked with it."""
    for stanza in header.stanzas:
        if stanza.args[0] != "X25519":
            continue
        if len(stanza.args) != 2 or len(stanza.body) != 32:
            raise CorruptBackupError(f"{what}: its age header has a malformed X25519 stanza")
        share = _unb64(stanza.args[1], "an X25519 share")
        if len(share) != 32:
            raise CorruptBackupError(f"{what}: its age header has a malformed X25519 stanza")
        for identity in identities:
            try:
                shared = identity.exchange(share)
            except ValueError:
                raise CorruptBackupError(f"{what}: its age header has a degenerate X25519 share") from None
            wrap_key = hkdf(shared, share + identity.recipient.public, X25519_INFO)
            file_key = _open_once(wrap_key, stanza.body)
            if file_key is None:
                continue
            mac = hmac.new(hkdf(file_key, b"", b"header"), header.signed, hashlib.sha256).digest()
            if not hmac.compare_digest(mac, header.mac):
                raise CorruptBackupError(f"{what}: its age header was changed (its MAC does not match)")
            return file_key
    raise UsageError(f"{what}: none of the given identities opens it (it is encrypted to "
                     f"{len(header.stanzas)} other recipient(s))")


# --- the payload --------------------------------------------------------------------------------------

class SealedFile:
    """Plaintext in at offsets, an age file out at ``fd``; ``close`` seals the last chunk and returns the
    plaintext's size.  Each chunk must be written whole, exactly once (in pieces, if need be)."""

    def __init__(self, fd: int, recipients: list[Recipient], *, direct: bool = False):
        """``direct``: ``fd`` was opened with O_DIRECT (see ``output.DirectOutput``)."""
        self.fd = fd
        file_key, nonce = os.urandom(16), os.urandom(NONCE)
        self._cipher = CipherThread("age-seal", IN_FLIGHT)     # the chunks are sealed there (cipher_thread)
        try:
            header = self._cipher.call(make_header, file_key, recipients)
            self.payload = len(header) + NONCE
            self._chunks = self._cipher.call(ChunkCipher, hkdf(file_key, nonce, b"payload"), True)
            output = (DirectOutput if direct else CachedOutput)(fd, self.payload + SEALED_CHUNK)
            output.write(0, header + nonce)
            self._writer = _Writer(output, self.payload, hashlib.sha256(header + nonce))
        except BaseException:
            self._cipher.close()
            raise
        self._partial: dict[int, tuple[bytearray, int]] = {}    # chunk -> (its bytes, how many written)
        #: the highest chunk so far, not sealed yet: (index, a buffer nobody changes, where in it, length)
        self._held: tuple[int, object, int, int] | None = None
        self._sealed: set[int] = set()
        #: consecutive chunks copied into ``_slots`` (one per SEALED_CHUNK), to seal: (index, length, final)
        self._batch: list[tuple[int, int, bool]] = []
        self._slots: bytearray | None = None
        self.size = 0

    def pwrite(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        """``data[start:end]`` at ``offset``.  Each byte is copied once, into the batch it is sealed in
        (``bytes``, or a view of them, cannot change meanwhile; any other buffer is copied if it must wait)."""
        end = len(data) if end is None else end
        view = memoryview(data)
        fixed = isinstance(view.obj, bytes)
        self.size = max(self.size, offset + end - start)
        while start < end:
            index, within = divmod(offset, CHUNK)
            take = min(CHUNK - within, end - start)
            if within == 0 and take == CHUNK and index not in self._partial:
                self._complete(index, data, start, CHUNK, fixed=fixed)
            else:
                buffer, filled = self._partial.get(index) or (bytearray(CHUNK), 0)
                memoryview(buffer)[within:within + take] = view[start:start + take]
                self._partial[index] = (buffer, filled + take)
                if filled + take == CHUNK:
                    del self._partial[index]
                    self._complete(index, buffer, 0, CHUNK, fixed=True)
            offset, start = offset + take, start + take

    def _complete(self, index: int, source, start: int, length: int, *, fixed: bool) -> None:
        """Chunk ``index`` is ``source[start:start + length]``; ``fixed``: ``source`` will not change."""
        if index in self._sealed or (self._held is not None and index == self._held[0]):
            raise VirtrbdError(f"internal error: chunk {index} of an encrypted file written twice")
        if self._held is None or index > self._held[0]:
            if not fixed:                               # it waits: keep what it is now
                source, start = bytes(memoryview(source)[start:start + length]), 0
            held, self._held = self._held, (index, source, start, length)
            if held is not None:
                self._seal(*held, final=False)
        else:
            self._seal(index, source, start, length, final=False)

    def _seal(self, index: int, source, start: int, length: int, final: bool) -> None:
        """Copy the chunk into its batch's next slot; a batch goes to the sealing thread when it is full or
        the next chunk does not follow it."""
        self._sealed.add(index)
        if self._batch and (index != self._batch[-1][0] + 1 or len(self._batch) == BATCH):
            self._hand_over()
        if self._slots is None:
            self._slots = self._writer.spare()
        slot = len(self._batch) * SEALED_CHUNK
        memoryview(self._slots)[slot:slot + length] = memoryview(source)[start:start + length]
        self._batch.append((index, length, final))

    def _hand_over(self) -> None:
        if self._batch:
            batch, slots, self._batch, self._slots = self._batch, self._slots, [], None
            self._cipher.submit(self._seal_and_write, batch, slots)

    def _seal_and_write(self, batch: list[tuple[int, int, bool]], slots: bytearray) -> None:
        """On the sealing thread: seal each chunk where it lies (its tag right after it: the sealed chunks
        follow each other as in the file) and queue the batch for the writer thread."""
        base, pinned = pin(slots)
        for slot, (index, length, final) in enumerate(batch):
            at = slot * SEALED_CHUNK
            self._chunks.seal_into(chunk_nonce(index, final), base + at, base, at, length)
        del pinned
        self._writer.put(batch[0][0], slots, (len(batch) - 1) * SEALED_CHUNK + batch[-1][1] + TAG)

    def close(self) -> int:
        """Seal what is held as the last chunk; the plaintext's size.  Every chunk before it must be whole."""
        last = -(-self.size // CHUNK) - 1
        tail = self._partial.pop(last, None)
        if tail is not None:
            self._complete(last, tail[0], 0, self.size - last * CHUNK, fixed=True)
        if self._partial or len(self._sealed) + (self._held is not None) != last + 1:
            raise VirtrbdError("internal error: an encrypted file was left with chunks never written")
        if self._held is not None:
            held, self._held = self._held, None
            self._seal(*held, final=True)
        elif self.size == 0:
            self._seal(0, b"", 0, 0, final=True)       # an empty payload is one empty final chunk
        self._hand_over()
        try:
            self._cipher.drain()
        finally:
            self._cipher.close()
        self._writer.finish()
        return self.size

    def abort(self) -> None:
        """Stop the sealing and writer threads after a failure (a no-op after ``close``)."""
        self._cipher.close()
        self._writer.stop()

    def digests(self) -> dict[str, str | int]:
        """What a verifier without the identity recomputes (after ``close``): see the module's docstring."""
        return {"head_bytes": self.payload + min(SEALED_CHUNK, self.size + TAG),
                "head_sha256": self._writer.head.hexdigest(), "rest_sha256": self._writer.rest.hexdigest()}


class _Writer(threading.Thread):
    """Writes and hashes the sealed chunks beside the thread that seals them: writing and SHA-256 release
    the GIL, so the two overlap.  The first chunk goes into the digest of the head, the others into that
    of the rest, which must come in order.  A batch's buffer, once written, waits in ``spares`` for the
    next batch: the buffers are made once, not one per MiB."""

    def __init__(self, output, payload: int, head):
        super().__init__(name="age-writer", daemon=True)
        self.output, self.payload = output, payload
        self.head, self.rest, self.next_rest = head, hashlib.sha256(), 1
        self.queue: queue.Queue = queue.Queue(maxsize=IN_FLIGHT)
        self.spares: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is None:                    # after an error, drain what comes: nothing blocks
                try:
                    self._write(*batch)
                except BaseException as exc:
                    self.error = exc

    def _write(self, first: int, slots: bytearray, used: int) -> None:
        view = memoryview(slots)[:used]
        self.output.write(self.payload + first * SEALED_CHUNK, view)
        if first == 0:
            self.head.update(view[:SEALED_CHUNK])
            view, first = view[SEALED_CHUNK:], 1
        if view:
            if first != self.next_rest:
                raise VirtrbdError(f"internal error: chunk {first} of an encrypted file sealed out of order")
            self.rest.update(view)
            self.next_rest = first + -(-len(view) // SEALED_CHUNK)
        view.release()
        self.spares.put(slots)

    def spare(self) -> bytearray:
        """A buffer for a batch: one the writer is done with, or a new one."""
        try:
            return self.spares.get_nowait()
        except queue.Empty:
            return bytearray(BATCH * SEALED_CHUNK)

    def put(self, first: int, slots: bytearray, used: int) -> None:
        """Consecutive sealed chunks from chunk ``first`` on, the first ``used`` bytes of ``slots``, to
        write with one call."""
        if self.error is not None:
            raise self.error
        self.queue.put((first, slots, used))

    def finish(self) -> None:
        """Write what is queued and what the output still gathers; raise the first error."""
        self._join()
        try:
            if self.error is not None:
                raise self.error
            self.output.finish()
        finally:
            self.output.close()

    def stop(self) -> None:
        """After a failure: stop writing, leave the rest unwritten."""
        self._join()
        self.output.close()

    def _join(self) -> None:
        if self.is_alive():
            self.queue.put(None)
            self.join()
