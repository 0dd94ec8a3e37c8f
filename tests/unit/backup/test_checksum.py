"""The content checksum: XXH3-128 over the XXH3-128 of each 4 MiB chunk, holes as zeros (and, for older
backups, the same with SHA-256)."""

from __future__ import annotations

import hashlib
import random
import subprocess

import pytest
import xxhash

from virtrbd.backup.formats.checksum import (
    ALGORITHM,
    SHA256_CHUNKS,
    XXH3_CHUNKS,
    BackgroundDigest,
    ContentDigest,
    zero_digest,
)
from virtrbd.backup.stream import CHUNK

PLAIN = {XXH3_CHUNKS: xxhash.xxh3_128, SHA256_CHUNKS: hashlib.sha256}


def reference(content: bytes, algorithm: str = XXH3_CHUNKS) -> str:
    """The definition, computed the plain way."""
    h = PLAIN[algorithm]
    digests = b"".join(h(content[i:i + CHUNK]).digest() for i in range(0, len(content), CHUNK))
    return h(digests).hexdigest()


def test_backups_are_checked_with_xxh3():
    assert ALGORITHM == "xxh3-128-of-4MiB-chunk-xxh3-128"


@pytest.mark.parametrize("algorithm", [XXH3_CHUNKS, SHA256_CHUNKS])
def test_each_algorithm_matches_its_definition(algorithm):
    rng = random.Random(11)
    content = bytearray(2 * CHUNK + 77)
    content[CHUNK - 3:CHUNK + 900] = rng.randbytes(903)
    digest = ContentDigest(len(content), algorithm=algorithm)
    for index in range(digest.count):
        digest.add(index, bytes(content[index * CHUNK:(index + 1) * CHUNK]))
    assert digest.hexdigest() == reference(bytes(content), algorithm)


def test_parts_hash_as_the_assembled_chunk_would():
    """A backup hashes its reads as they came, zeros between them: the value is the assembled chunk's."""
    rng = random.Random(21)
    for _ in range(60):
        length = rng.choice([CHUNK, rng.randrange(1, CHUNK)])
        cuts = sorted(rng.sample(range(length + 1), rng.randrange(0, 8) * 2))
        parts = [(cuts[i], rng.randbytes(cuts[i + 1] - cuts[i])) for i in range(0, len(cuts), 2)]
        assembled = bytearray(length)
        for start, data in parts:
            assembled[start:start + len(data)] = data
        for algorithm in (XXH3_CHUNKS, SHA256_CHUNKS):
            whole, pieces = (ContentDigest(length, algorithm=algorithm) for _ in range(2))
            assert pieces.add_parts(0, parts) == whole.add(0, bytes(assembled))
            assert pieces.hexdigest() == whole.hexdigest()


def test_parts_out_of_order_or_beyond_the_chunk_are_refused():
    with pytest.raises(ValueError, match="out of order or beyond"):
        ContentDigest(CHUNK).add_parts(0, [(100, b"x" * 10), (50, b"y")])
    with pytest.raises(ValueError, match="out of order or beyond"):
        ContentDigest(CHUNK + 5).add_parts(1, [(0, b"x" * 6)])


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
    assert ContentDigest(0).hexdigest() == xxhash.xxh3_128(b"").hexdigest()
    assert ContentDigest(0, algorithm=SHA256_CHUNKS).hexdigest() == hashlib.sha256(b"").hexdigest()


def test_chunks_must_come_in_order():
    digest = ContentDigest(3 * CHUNK)
    digest.add(1, None)
    with pytest.raises(ValueError, match="out of order"):
        digest.add(0, None)


def test_wrong_chunk_length_is_refused():
    with pytest.raises(ValueError, match="expected"):
        ContentDigest(CHUNK + 10).add(1, b"x" * 11)


def test_zero_digest_of_a_partial_chunk():
    assert zero_digest(10) == xxhash.xxh3_128(bytes(10)).digest()
    assert zero_digest(10, SHA256_CHUNKS) == hashlib.sha256(bytes(10)).digest()


@pytest.mark.parametrize("algorithm", [XXH3_CHUNKS, SHA256_CHUNKS])
def test_background_digest_gives_the_same_value_and_digests(algorithm):
    rng = random.Random(3)
    size = 6 * CHUNK + 99
    chunks = {1: rng.randbytes(CHUNK), 2: bytes(CHUNK), 4: rng.randbytes(CHUNK), 6: rng.randbytes(99)}
    plain = ContentDigest(size, keep=True, algorithm=algorithm)
    with BackgroundDigest(size, keep=True, pending=1, algorithm=algorithm) as background:
        for index in sorted(chunks):
            plain.add(index, chunks[index])
            background.add(index, chunks[index])
        assert background.hexdigest() == plain.hexdigest()
    assert background.digests == plain.digests
    assert background.digest.hashed_bytes == plain.hashed_bytes == 2 * CHUNK + 99


def test_background_digest_refuses_a_wrong_length():
    with BackgroundDigest(CHUNK) as digest, pytest.raises(ValueError, match="expected"):
        digest.add(0, b"x")


def test_xxhsum_and_coreutils_reproduce_the_value(tmp_path):
    """The manifest's checksum can be recomputed from a RAW file with Debian's xxhash and coreutils, as the
    docs say: ``split -b 4M -d -a 8 FILE c. && xxhsum -H2 c.* | cut -c1-32 | xxd -r -p | xxhsum -H2``."""
    content = random.Random(5).randbytes(2 * CHUNK + 1)
    (tmp_path / "image").write_bytes(content)
    out = subprocess.run("split -b 4M -d -a 8 image c. && xxhsum -H2 c.* | cut -c1-32 | xxd -r -p | xxhsum -H2",
                         shell=True, cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    digest = ContentDigest(len(content))
    for index in range(digest.count):
        digest.add(index, content[index * CHUNK:(index + 1) * CHUNK])
    assert out.split()[0] == digest.hexdigest()


def test_coreutils_reproduce_the_sha256_value_of_older_backups(tmp_path):
    """The older checksum can be recomputed from a RAW file with split and sha256sum."""
    content = random.Random(5).randbytes(2 * CHUNK + 1)
    (tmp_path / "image").write_bytes(content)
    subprocess.run(["split", "-b", "4M", "-d", "image", "c."], cwd=tmp_path, check=True)
    listing = subprocess.run("sha256sum c.*", shell=True, cwd=tmp_path, check=True, capture_output=True,
                             text=True).stdout
    outer = hashlib.sha256(b"".join(bytes.fromhex(line[:64]) for line in listing.splitlines())).hexdigest()
    digest = ContentDigest(len(content), algorithm=SHA256_CHUNKS)
    for index in range(digest.count):
        digest.add(index, content[index * CHUNK:(index + 1) * CHUNK])
    assert digest.hexdigest() == outer
