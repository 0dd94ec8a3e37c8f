"""Signed manifests: a backup authenticated without any private key, and every kind of tampering named."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat

import pytest

from virtrbd.backup.formats import manifest as manifests
from virtrbd.backup.memory import MemorySink
from virtrbd.backup.restore import plan_restore, restore_chain
from virtrbd.backup.sealing.age import SEALED_CHUNK
from virtrbd.backup.sealing.evp import ed25519_public, ed25519_sign, ed25519_verify
from virtrbd.backup.sealing.keys import Identity, write_identity
from virtrbd.backup.sealing.signing import SigningKey, parse_signer, read_signing_key, write_signing_key
from virtrbd.backup.trust import Trust
from virtrbd.backup.verify import run_verify
from virtrbd.config import BackupSettings, virtrbd_signers
from virtrbd.errors import CorruptBackupError, UsageError

from .conftest import flip_byte, scattered
from .test_manifest import edit

SIZE = 3 * (4 << 20)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey(os.urandom(32))


@pytest.fixture
def identity() -> Identity:
    return Identity.generate()


# RFC 8032, section 7.1: TEST 1 (the empty message) and TEST 2 (one byte)
RFC_8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC_8032)
def test_ed25519_is_rfc_8032s(secret, public, message, signature):
    secret, public, message, signature = map(bytes.fromhex, (secret, public, message, signature))
    assert ed25519_public(secret) == public
    assert ed25519_sign(secret, message) == signature
    assert ed25519_verify(public, message, signature)
    assert not ed25519_verify(public, message + b"!", signature)
    assert not ed25519_verify(public, message, signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not ed25519_verify(public, message, signature[:63])              # too short: no parse, no error
    assert not ed25519_verify(public[:31], message, signature)
    assert ctypes.CDLL("libcrypto.so.3").ERR_peek_error() == 0        # no failure left for the next caller


def test_signatures_check_out_with_an_independent_ed25519():
    """The ``cryptography`` package (a test's judge, not the product's dependency) agrees both ways."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    secret, message = os.urandom(32), os.urandom(100)
    theirs = Ed25519PrivateKey.from_private_bytes(secret)
    assert ed25519_public(secret) == theirs.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    Ed25519PublicKey.from_public_bytes(ed25519_public(secret)).verify(ed25519_sign(secret, message), message)
    assert ed25519_verify(ed25519_public(secret), message, theirs.sign(message))


def test_signing_keys_are_written_0600_never_over_a_file_and_read_back(tmp_path):
    path = tmp_path / "sign.key"
    key = write_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_signing_key(path).signer == key.signer
    assert str(key.signer).startswith("virtrbd-signer1")
    assert parse_signer(str(key.signer).upper()) == key.signer
    assert key.encode() not in repr(key)
    with pytest.raises(UsageError, match="exists already"):
        write_signing_key(path)
    path.chmod(0o640)
    with pytest.raises(UsageError, match="others may read it"):
        read_signing_key(path)


def test_an_age_identity_is_no_signing_key_and_no_key_is_echoed(tmp_path, key):
    write_identity(tmp_path / "age.key")
    with pytest.raises(UsageError, match="not a virtrbd signing key"):
        read_signing_key(tmp_path / "age.key")
    with pytest.raises(UsageError) as refused:
        parse_signer(key.encode())
    assert "private signing key" in str(refused.value) and key.encode() not in str(refused.value)
    with pytest.raises(ValueError, match="not a virtrbd signer"):
        virtrbd_signers(f"{key.signer}, {Identity.generate().recipient}")
    assert virtrbd_signers(f"{key.signer}") == (str(key.signer),)


def test_a_signed_manifest_is_authenticated_by_its_signer_only(make_full, key):
    content, extents = scattered(SIZE, seed=3)
    m = manifests.resolve(make_full(content, extents, fmt="qcow2", signing_key=key).path)
    assert m.signature["signer"] == str(key.signer)
    assert Trust((key.signer,)).authenticate(m).startswith("authenticated")
    assert "not authenticated" in Trust().authenticate(m)
    with pytest.raises(CorruptBackupError, match="which this host does not trust"):
        Trust((SigningKey(os.urandom(32)).signer,)).authenticate(m)
    assert run_verify(m, trust=Trust((key.signer,))).signature.startswith("authenticated")


def test_trust_comes_from_the_config_and_the_command_line(tmp_path, key):
    own = write_signing_key(tmp_path / "own.key")
    trust = Trust.of(BackupSettings(signing_key=tmp_path / "own.key", signers=(str(key.signer),)),
                     [str(key.signer)])
    assert set(trust.signers) == {own.signer, key.signer}
    assert Trust.of(None).signers == ()


def test_an_edited_or_stripped_manifest_is_refused_once_signers_are_trusted(make_full, key):
    content, extents = scattered(SIZE, seed=4)
    result = make_full(content, extents, fmt="qcow2", signing_key=key)
    edit(result.manifest, snapshot_time="2001-01-01T00:00:00+00:00")     # resealed, signature kept
    with pytest.raises(CorruptBackupError, match="signature does not match its fields"):
        Trust().authenticate(manifests.resolve(result.path))           # caught even with nobody trusted
    data = json.loads(result.manifest.read_text())
    data.pop("signature")
    data["seal"] = manifests.seal_of(data)
    result.manifest.write_text(manifests.dumps(data))
    unsigned = manifests.resolve(result.path)
    assert Trust().authenticate(unsigned) == "unsigned"
    with pytest.raises(CorruptBackupError, match="not signed"):
        run_verify(unsigned, trust=Trust((key.signer,)))


def sealed_pair(make_full, tmp_path, key, identity):
    """Two encrypted, signed backups of different content, each in a folder of its own."""
    made = []
    for seed in (5, 6):
        folder = tmp_path / f"d{seed}"
        folder.mkdir()
        content, extents = scattered(SIZE, seed=seed)
        made.append((make_full(content, extents, fmt="qcow2", dest=folder, recipients=(identity.recipient,),
                               signing_key=key), content))
    return made


def swap_chunks(path, head: int, first: int, second: int) -> None:
    with open(path, "r+b") as f:
        spots = [head + index * SEALED_CHUNK for index in (first, second)]
        pieces = []
        for spot in spots:
            f.seek(spot)
            pieces.append(f.read(SEALED_CHUNK))
        for spot, piece in zip(spots, reversed(pieces), strict=True):
            f.seek(spot)
            f.write(piece)


def forge(result, other) -> None:
    """The attacker's best: another genuine backup's file under this name, the digests copied into this
    manifest, resealed (the signature cannot follow)."""
    shutil.copyfile(other.path, result.path)
    theirs = json.loads(other.manifest.read_text())
    edit(result.manifest, encryption=theirs["encryption"], file_size=theirs["file_size"])


TAMPERING = {
    "a flipped byte in the header": lambda r, o, head: flip_byte(r.path, 40),
    "a flipped byte in the data": lambda r, o, head: flip_byte(r.path, r.file_size - 3000),
    "a truncated file": lambda r, o, head: os.truncate(r.path, r.file_size - 1),
    "two swapped chunks": lambda r, o, head: swap_chunks(r.path, head, 1, 2),
    "a file from another backup": lambda r, o, head: shutil.copyfile(o.path, r.path),
    "an edited manifest": lambda r, o, head: forge(r, o),
}


@pytest.mark.parametrize("damage", sorted(TAMPERING))
def test_tampering_is_found_without_the_identity_and_stops_a_restore_early(make_full, tmp_path, key, identity,
                                                                           damage):
    (result, content), (other, _) = sealed_pair(make_full, tmp_path, key, identity)
    trust = Trust((key.signer,))
    head = manifests.resolve(result.path).encryption["head_bytes"]
    assert run_verify(manifests.resolve(result.path), trust=trust).checked_bytes == result.file_size
    TAMPERING[damage](result, other, head)
    with pytest.raises(CorruptBackupError) as found:
        run_verify(manifests.resolve(result.path), trust=trust)
    assert "\n" not in str(found.value)
    with pytest.raises(CorruptBackupError):       # refused in the plan, or while the data is read: never restored
        plan = plan_restore(result.path, [identity], trust=trust)
        sink = MemorySink(SIZE)
        restore_chain(plan, sink)
        assert bytes(sink.data) != content, "a tampered backup must not restore as the original"


@pytest.mark.parametrize("damage", ["a truncated file", "a file from another backup", "an edited manifest"])
def test_whole_file_tampering_is_refused_before_anything_is_written(make_full, tmp_path, key, identity, damage):
    (result, _), (other, _) = sealed_pair(make_full, tmp_path, key, identity)
    TAMPERING[damage](result, other, manifests.resolve(result.path).encryption["head_bytes"])
    with pytest.raises(CorruptBackupError):
        plan_restore(result.path, [identity], trust=Trust((key.signer,)))


def test_a_backup_forged_for_the_public_recipients_is_refused(make_full, tmp_path, key, identity):
    """Anyone may encrypt to a public recipient; only the signature tells the hypervisor's backups apart."""
    content, extents = scattered(SIZE, seed=7)
    forged = make_full(content, extents, fmt="qcow2", recipients=(identity.recipient,),
                       signing_key=SigningKey(os.urandom(32)))
    with pytest.raises(CorruptBackupError, match="does not trust"):
        plan_restore(forged.path, [identity], trust=Trust((key.signer,)))


def test_a_manifest_naming_a_signer_that_does_not_parse_is_a_damaged_backup(make_full, key):
    content, extents = scattered(SIZE, seed=8)
    result = make_full(content, extents, fmt="qcow2", signing_key=key)
    data = json.loads(result.manifest.read_text())
    edit(result.manifest, signature={**data["signature"], "signer": "virtrbd-signer1qqqq"})
    with pytest.raises(CorruptBackupError, match="the manifest's signer .* is not a virtrbd signer"):
        Trust().authenticate(manifests.resolve(result.path))
