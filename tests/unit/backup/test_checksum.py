"""The content checksum: SHA-256 over the SHA-256 of each 4 MiB chunk, holes as zeros."""

from __future__ import annotations

import hashlib
import random

import pytest

from virtrbd.backup.formats.checksum import ALGORITHM, BackgroundDigest, ContentDigest, zero_digest
from virtrbd.backup.stream import CHUNK


def reference(content: bytes) -> str:
    """The definition, computed the plain way."""
    digests = b"".join(hashlib.sha256(content[i:i + CHUNK]).digest() for i in range(0, len(content), CHUNK))
    return hashlib.sha256(digests).hexdigest()


def test_matches_the_definition_for_an_odd_size():
    rng = random.Random(7)
    content = bytearray(3 * CHUNK + 12345)
    content[CHUNK + 5:CHUNK + 5000] = rng.randbytes(4995)
    content[-10:] = rng.randbytes(10)
    digest = ContentDigest(len(content))
    for index in range(digest.count):
        chunk = bytes(content[index * CHUNK:(index + 1) * CHUNK])
        digest.add(index, None if chunk == bytes(len(chunk)) else chunk)
    assert digest.hexdigest() == reference(bytes(content))
    assert ALGORITHM == "sha256-of-4MiB-chunk-sha256"


def test_chunks_never_added_count_as_zeros():
    size = 2 * CHUNK + 1
    digest = ContentDigest(size)
    assert digest.hexdigest() == reference(bytes(size))
    assert digest.hashed_bytes == 0


def test_allocated_zeros_are_not_hashed_again():
    digest = ContentDigest(CHUNK)
    digest.add(0, bytes(CHUNK))
    assert digest.hashed_bytes == 0
    assert digest.hexdigest() == reference(bytes(CHUNK))


def test_empty_image():
    assert ContentDigest(0).hexdigest() == hashlib.sha256(b"").hexdigest()


def test_chunks_must_come_in_order():
    digest = ContentDigest(3 * CHUNK)
    digest.add(1, None)
    with pytest.raises(ValueError, match="out of order"):
        digest.add(0, None)


def test_wrong_chunk_length_is_refused():
    with pytest.raises(ValueError, match="expected"):
        ContentDigest(CHUNK + 10).add(1, b"x" * 11)


def test_zero_digest_of_a_partial_chunk():
    assert zero_digest(10) == hashlib.sha256(bytes(10)).digest()


def test_background_digest_gives_the_same_value_and_digests():
    rng = random.Random(3)
    size = 6 * CHUNK + 99
    chunks = {1: rng.randbytes(CHUNK), 2: bytes(CHUNK), 4: rng.randbytes(CHUNK), 6: rng.randbytes(99)}
    plain = ContentDigest(size, keep=True)
    with BackgroundDigest(size, keep=True, pending=1) as background:
        for index in sorted(chunks):
            plain.add(index, chunks[index])
            background.add(index, chunks[index])
        assert background.hexdigest() == plain.hexdigest()
    assert background.digests == plain.digests
    assert background.digest.hashed_bytes == plain.hashed_bytes == 2 * CHUNK + 99


def test_background_digest_refuses_a_wrong_length():
    with BackgroundDigest(CHUNK) as digest, pytest.raises(ValueError, match="expected"):
        digest.add(0, b"x")


def test_coreutils_reproduce_the_value(tmp_path):
    """The manifest's checksum can be recomputed from a RAW file with split and sha256sum."""
    import subprocess
    content = random.Random(5).randbytes(2 * CHUNK + 1)
    (tmp_path / "image").write_bytes(content)
    subprocess.run(["split", "-b", "4M", "-d", "image", "c."], cwd=tmp_path, check=True)
    listing = subprocess.run("sha256sum c.*", shell=True, cwd=tmp_path, check=True, capture_output=True,
                             text=True).stdout
    outer = hashlib.sha256(b"".join(bytes.fromhex(line[:64]) for line in listing.splitlines())).hexdigest()
    digest = ContentDigest(len(content))
    for index in range(digest.count):
        digest.add(index, content[index * CHUNK:(index + 1) * CHUNK])
    assert digest.hexdigest() == outer
