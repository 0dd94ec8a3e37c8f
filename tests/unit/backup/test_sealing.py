"""age files and keys, judged by Debian's own ``age`` tool where it is installed (tests' judge, not the product's)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shutil
import stat
import subprocess
import threading

import pytest

from virtrbd import bech32
from virtrbd.backup.sealing.age import CHUNK, SEALED_CHUNK, SealedFile, read_header
from virtrbd.backup.sealing.keys import Identity, parse_recipient, read_identities, write_identity
from virtrbd.backup.sealing.opened import OpenedFile
from virtrbd.errors import CorruptBackupError, UsageError, VirtrbdError

AGE = shutil.which("age") or "age"          # Debian's age, installed by make setup: the judge of our files

# the example key of the age specification (c2sp.org/age): 32 bytes of 0x42
SPEC_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"


def test_bech32_and_the_x25519_key_of_the_specification():
    hrp, secret = bech32.decode(SPEC_IDENTITY)
    assert hrp == "age-secret-key-" and secret == b"\x42" * 32
    assert str(Identity(secret).recipient) == SPEC_RECIPIENT
    assert Identity(secret).encode() == SPEC_IDENTITY
    assert parse_recipient(SPEC_RECIPIENT).public.hex().startswith("132c442b")


@pytest.mark.parametrize("text, words", [
    (SPEC_RECIPIENT[:-1] + "q", "checksum does not match"),
    (SPEC_RECIPIENT[:10] + SPEC_RECIPIENT[10:].upper(), "mixes upper and lower case"),
    ("age1", "no human-readable part"),
    ("age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwb!", "outside Bech32's alphabet"),
    (bech32.encode("abc", bytes(32)), "not an age X25519 recipient"),
    (bech32.encode("age", bytes(31)), "not an age X25519 recipient"),
    (SPEC_IDENTITY, "a private identity"),
    (SPEC_IDENTITY.lower(), "a private identity"),
    ("", "not an age recipient"),
])
def test_a_recipient_that_does_not_parse_is_one_line_without_any_secret(text, words):
    with pytest.raises(UsageError) as caught:
        parse_recipient(text)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert "GFPYYSJZ" not in str(caught.value).upper()               # an identity is never echoed


def test_identity_files_are_written_0600_never_over_a_file_and_read_back(tmp_path):
    path = tmp_path / "operator.key"
    made = write_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f"# public key: {made.recipient}" in text and text.splitlines()[-1].startswith("AGE-SECRET-KEY-1")
    assert [i.recipient for i in read_identities(path)] == [made.recipient]
    with pytest.raises(UsageError, match="exists already"):
        write_identity(path)
    assert "AGE-SECRET-KEY" not in repr(made)


@pytest.mark.parametrize("content, mode, words", [
    (SPEC_IDENTITY + "\n", 0o644, "others may read it"),
    (SPEC_IDENTITY + "\n", 0o640, "others may read it"),
    ("# nothing here\n", 0o600, "holds no identity"),
    (SPEC_RECIPIENT + "\n", 0o600, "a public recipient"),
    ("AGE-SECRET-KEY-1QQQQ\n", 0o600, "not an age identity"),
])
def test_bad_identity_files_are_refused_in_one_line(tmp_path, content, mode, words):
    path = tmp_path / "id"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(UsageError) as caught:
        read_identities(path)
    assert words in str(caught.value) and "GFPYYSJZ" not in str(caught.value)


def test_a_missing_identity_file_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="cannot open it"):
        read_identities(tmp_path / "absent")


def sealed(tmp_path, plaintext: bytes, recipients, order=None, direct=False):
    """``plaintext`` written into an age file chunk by chunk in ``order`` (default: first chunk last);
    ``direct``: through an O_DIRECT descriptor, as full backups are written."""
    path = tmp_path / "file.age"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0), 0o600)
    try:
        writer = SealedFile(fd, recipients, direct=direct)
        chunks = list(range(-(-len(plaintext) // CHUNK)))
        for index in order if order is not None else chunks[1:] + chunks[:1]:
            writer.pwrite(index * CHUNK, plaintext, index * CHUNK, min(len(plaintext), (index + 1) * CHUNK))
        assert writer.close() == len(plaintext)
        return path, writer.digests()
    finally:
        os.close(fd)


def opened(path, identities) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = OpenedFile(fd, identities, str(path))
        try:
            return reader.pread(reader.size + 10, 0)
        finally:
            reader.close()
    finally:
        os.close(fd)


@pytest.mark.parametrize("direct", [False, True], ids=["cached", "direct"])
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 1234, 40 * CHUNK + 123])
def test_round_trip_in_any_order_and_by_debians_age(tmp_path, size, direct):
    ours = Identity.generate()
    plaintext = random.Random(size).randbytes(size)
    path, digests = sealed(tmp_path, plaintext, [ours.recipient], direct=direct)
    assert opened(path, [ours]) == plaintext
    data = path.read_bytes()
    assert hashlib.sha256(data[:digests["head_bytes"]]).hexdigest() == digests["head_sha256"]
    assert hashlib.sha256(data[digests["head_bytes"]:]).hexdigest() == digests["rest_sha256"]
    key = tmp_path / "key"
    key.write_text(ours.encode() + "\n")
    key.chmod(0o600)
    done = subprocess.run([AGE, "-d", "-i", str(key), str(path)], capture_output=True)
    assert done.returncode == 0 and done.stdout == plaintext, done.stderr


def test_pieces_of_chunks_written_out_of_order_make_the_same_plaintext(tmp_path):
    ours = Identity.generate()
    plaintext = os.urandom(4 * CHUNK + 100)
    path = tmp_path / "f.age"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    writer = SealedFile(fd, [ours.recipient])
    for start in [*range(4096, len(plaintext), 4096), 0]:              # 4 KiB clusters, the first last
        writer.pwrite(start, plaintext, start, min(start + 4096, len(plaintext)))
    writer.close()
    os.close(fd)
    assert opened(path, [ours]) == plaintext


def test_a_chunk_waits_by_reference_when_nobody_can_change_it_and_as_a_copy_otherwise(tmp_path):
    """The highest chunk waits unsealed until the next one comes (is it the last?): ``bytes``, or a view
    of them as the backup formats hand over, wait as they are; a buffer its owner may reuse is copied."""
    ours = Identity.generate()
    plaintext = os.urandom(3 * CHUNK)
    path = tmp_path / "f.age"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    writer = SealedFile(fd, [ours.recipient])
    writer.pwrite(0, memoryview(plaintext)[:CHUNK])
    assert memoryview(writer._held[1]).obj is plaintext                 # held, not copied
    reused = bytearray(plaintext[CHUNK:2 * CHUNK])
    writer.pwrite(CHUNK, reused)
    reused[:] = bytes(CHUNK)                                            # its owner fills it again
    writer.pwrite(2 * CHUNK, memoryview(bytearray(plaintext[2 * CHUNK:])))
    writer.close()
    os.close(fd)
    assert opened(path, [ours]) == plaintext


def test_a_chunk_written_twice_is_refused_before_a_nonce_is_reused(tmp_path):
    fd = os.open(tmp_path / "f.age", os.O_RDWR | os.O_CREAT, 0o600)
    writer = SealedFile(fd, [Identity.generate().recipient])
    writer.pwrite(0, bytes(CHUNK))
    writer.pwrite(CHUNK, bytes(CHUNK))
    with pytest.raises(VirtrbdError, match="written twice"):
        writer.pwrite(0, bytes(CHUNK))
    with pytest.raises(VirtrbdError, match="written twice"):
        writer.pwrite(CHUNK, bytes(CHUNK))                              # the held one, too
    os.close(fd)


def test_a_gap_is_refused_at_close(tmp_path):
    fd = os.open(tmp_path / "f.age", os.O_RDWR | os.O_CREAT, 0o600)
    writer = SealedFile(fd, [Identity.generate().recipient])
    writer.pwrite(2 * CHUNK, bytes(CHUNK))
    with pytest.raises(VirtrbdError, match="never written"):
        writer.close()
    os.close(fd)


def test_two_recipients_each_open_it_alone_and_a_third_identity_is_refused(tmp_path):
    first, second, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    plaintext = os.urandom(CHUNK + 7)
    path, _ = sealed(tmp_path, plaintext, [first.recipient, second.recipient])
    assert opened(path, [first]) == plaintext and opened(path, [second]) == plaintext
    with pytest.raises(UsageError, match="none of the given identities opens it") as caught:
        opened(path, [stranger])
    assert "2 other recipient(s)" in str(caught.value)


def test_a_file_debians_age_encrypted_opens_here(tmp_path):
    ours = Identity.generate()
    plaintext = os.urandom(2 * CHUNK + 3)
    (tmp_path / "plain").write_bytes(plaintext)
    done = subprocess.run([AGE, "-r", str(ours.recipient), "-o", str(tmp_path / "f.age"), str(tmp_path / "plain")],
                          capture_output=True)
    assert done.returncode == 0, done.stderr
    assert opened(tmp_path / "f.age", [ours]) == plaintext


def test_an_identity_age_keygen_made_opens_our_files(tmp_path):
    key = tmp_path / "keygen.key"
    assert subprocess.run([shutil.which("age-keygen") or "age-keygen", "-o", str(key)], capture_output=True).returncode == 0
    key.chmod(0o600)
    theirs = read_identities(key)
    path, _ = sealed(tmp_path, b"hello", [theirs[0].recipient])
    assert opened(path, theirs) == b"hello"


@pytest.mark.parametrize("damage", ["flip payload", "flip header", "truncate chunk", "truncate to chunk",
                                    "swap chunks", "append"])
def test_any_change_is_found_by_the_identity(tmp_path, damage):
    ours = Identity.generate()
    path, _ = sealed(tmp_path, os.urandom(3 * CHUNK + 5), [ours.recipient])
    data = bytearray(path.read_bytes())
    fd = os.open(path, os.O_RDONLY)
    reader = OpenedFile(fd, [ours], "x")
    payload = reader.payload
    reader.close()
    os.close(fd)
    if damage == "flip payload":
        data[payload + SEALED_CHUNK + 99] ^= 1
    elif damage == "flip header":
        data[30] ^= 1
    elif damage == "truncate chunk":
        del data[-10:]
    elif damage == "truncate to chunk":
        del data[payload + 2 * SEALED_CHUNK:]
    elif damage == "swap chunks":
        first = slice(payload, payload + SEALED_CHUNK)
        second = slice(payload + SEALED_CHUNK, payload + 2 * SEALED_CHUNK)
        data[first], data[second] = data[second], data[first]
    else:
        data += b"more"
    path.write_bytes(bytes(data))
    with pytest.raises((CorruptBackupError, UsageError)):
        opened(path, [ours])


def test_a_file_that_is_no_age_file_is_one_line(tmp_path):
    path = tmp_path / "plain.qcow2"
    path.write_bytes(b"QFI\xfb" + bytes(100))
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(CorruptBackupError, match="not an age-encryption.org/v1 file"):
        read_header(fd, str(path))
    os.close(fd)


def test_a_write_that_fails_in_the_writer_thread_comes_back_to_the_caller(tmp_path):
    path = tmp_path / "f.age"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    writer = SealedFile(fd, [Identity.generate().recipient])
    os.close(fd)                                               # every later write fails: EBADF
    with pytest.raises(OSError):
        for index in range(100):
            writer.pwrite(index * CHUNK, bytes(CHUNK))
        writer.close()
    writer.abort()
    assert not writer._writer.is_alive()


def test_the_cipher_runs_only_on_threads_that_do_nothing_else(tmp_path, monkeypatch):
    """OpenSSL's ChaCha20-Poly1305 slows every later SSE instruction of its thread (XXH3 4.5x here): the
    header's stanzas, the sealing and the opening (and the payload cipher's key setup) run on the age
    threads, never where hashing runs."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from virtrbd.backup.sealing.evp import ChunkCipher

    seen = []
    for cls, name, kind in ((ChaCha20Poly1305, "encrypt", "encrypt"), (ChaCha20Poly1305, "decrypt", "decrypt"),
                            (ChunkCipher, "seal_into", "encrypt"), (ChunkCipher, "open_into", "decrypt"),
                            (ChunkCipher, "__init__", "setup")):
        original = getattr(cls, name)

        def spy(self, *args, _original=original, _kind=kind):
            seen.append((_kind if _kind != "setup" else ("encrypt" if args[1] else "decrypt"),
                         threading.current_thread().name))
            return _original(self, *args)
        monkeypatch.setattr(cls, name, spy)
    ours = Identity.generate()
    plaintext = os.urandom(20 * CHUNK + 7)
    path, _ = sealed(tmp_path, plaintext, [ours.recipient, Identity.generate().recipient])
    assert opened(path, [ours]) == plaintext
    assert {kind for kind, _ in seen} == {"encrypt", "decrypt"} and len(seen) > 40
    assert all(thread.startswith("age-seal" if kind == "encrypt" else "age-open") for kind, thread in seen), seen


def test_x25519_is_rfc_7748s_and_refuses_a_share_that_gives_no_secret():
    from virtrbd.backup.sealing.evp import x25519, x25519_public

    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert x25519_public(alice).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert x25519_public(bob).hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert x25519(alice, x25519_public(bob)).hex() == shared == x25519(bob, x25519_public(alice)).hex()
    for share in (bytes(32), b"\x01" + bytes(31), b"short"):      # small order (no secret), or not a key
        with pytest.raises(ValueError):
            x25519(alice, share)


def test_a_header_share_of_small_order_is_refused_in_one_line(tmp_path):
    ours = Identity.generate()
    path, _ = sealed(tmp_path, b"data", [ours.recipient])
    data = bytearray(path.read_bytes())
    share = read_header(os.open(path, os.O_RDONLY), "x").stanzas[0].args[1].encode()
    at = bytes(data).index(share)
    data[at:at + len(share)] = base64.b64encode(bytes(32)).rstrip(b"=")
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBackupError, match="degenerate X25519 share"):
        opened(path, [ours])


def test_a_recipient_of_small_order_is_refused_before_anything_is_written(tmp_path):
    from virtrbd.backup.sealing.keys import Recipient
    with pytest.raises(UsageError, match="not a usable X25519 public key"):
        sealed(tmp_path, b"data", [Recipient(bytes(32))])
    assert (tmp_path / "file.age").stat().st_size == 0
