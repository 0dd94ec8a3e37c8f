"""Backups encrypted to public recipients (age): written by a host that holds no identity, read back with one.

The independent judges: Debian's ``age`` decrypts each file, ``qemu-img check`` accepts the decrypted full
and Ceph's ``rbd import-diff`` applies the decrypted incremental on top of it; the chain restored by virtrbd
with either recipient's identity is byte for byte the newest snapshot.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from virtrbd.backup.formats import manifest as manifests

from ..cli_helpers import assert_one_line_error, virtrbd
from .backup_support import MiB, random_bytes, scattered_writes, sha256_of

SIZE = 48 * MiB


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two operators' identities (made with the product's own command) and their recipients."""
    folder = tmp_path_factory.mktemp("keys")
    made = []
    for name in ("operator", "escrow"):
        path = folder / f"{name}.key"
        said = virtrbd("backup-key", "new", "--out", str(path), "--json")
        assert said.code == 0, said.err
        made.append((path, json.loads(said.out)["recipient"]))
    return made


@pytest.fixture
def chain(lab, images, keys, tmp_path):
    """An image, s1 and s2, and an encrypted full (QCOW2 by default) of s1 and incremental s1->s2."""
    name = images.create(SIZE, scattered_writes(SIZE, seed=71))
    images.write(name, [(3 * MiB + 5, random_bytes(70000, 72)), (40 * MiB, random_bytes(MiB, 73))], snapshot="s2")
    dest = tmp_path / "backups"
    dest.mkdir()
    recipients = [arg for _path, recipient in keys for arg in ("--recipient", recipient)]
    full = virtrbd("backup", f"rbd/{name}@s1", str(dest), *recipients, "--json", env=lab.env)
    assert full.code == 0, full.err
    inc = virtrbd("backup", f"rbd/{name}@s2", str(dest), "--since", f"rbd/{name}@s1", *recipients, "--json",
                  env=lab.env)
    assert inc.code == 0, inc.err
    return name, dest, json.loads(full.out)["path"], json.loads(inc.out)["path"]


def decrypt(identity, path, out) -> None:
    done = subprocess.run(["age", "-d", "-i", str(identity), "-o", str(out), str(path)], capture_output=True)
    assert done.returncode == 0, done.stderr


def test_each_recipient_alone_restores_the_chain_byte_for_byte(lab, images, keys, chain, storage):
    name, _dest, _full, inc = chain
    for identity, _recipient in keys:
        target = images.name()
        done = virtrbd("restore", inc, f"rbd/{target}", "--identity", str(identity), env=lab.env)
        assert done.code == 0, done.err
        assert sha256_of(storage, f"rbd/{target}") == sha256_of(storage, f"rbd/{name}@s2")


def test_debians_age_gives_back_files_qemu_img_and_rbd_import_diff_accept(lab, images, keys, chain, judge,
                                                                          storage, tmp_path):
    name, _dest, full, inc = chain
    identity = keys[1][0]
    assert not open(full, "rb").read(4) == b"QFI\xfb"                     # ciphertext on the share
    decrypt(identity, full, tmp_path / "full.qcow2")
    decrypt(identity, inc, tmp_path / "inc.rbddiff")
    checked = judge.qemu_img("check", "-f", "qcow2", str(tmp_path / "full.qcow2"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    raw = tmp_path / "full.raw"
    assert judge.qemu_img("convert", "-f", "qcow2", "-O", "raw", str(tmp_path / "full.qcow2"), str(raw)).returncode == 0
    target = images.name()
    judge.rbd("import", str(raw), f"rbd/{target}")
    judge.rbd("snap", "create", f"rbd/{target}@s1")
    judge.rbd("import-diff", str(tmp_path / "inc.rbddiff"), f"rbd/{target}")
    assert sha256_of(storage, f"rbd/{target}") == sha256_of(storage, f"rbd/{name}@s2")


def test_the_manifest_names_the_recipients_and_what_is_checked_without_a_key(chain, keys):
    _name, _dest, full, inc = chain
    for path in (full, inc):
        m = manifests.resolve(path)
        assert m.encryption["format"] == "age-encryption.org/v1" and len(m.encryption["recipients"]) == 2
        assert m.file_size == len(open(path, "rb").read())
    said = virtrbd("verify", full, "--json")
    assert said.code == 0, said.err
    assert "needs --identity" in json.loads(said.out)["judged"]
    said = virtrbd("verify", inc, "--identity", str(keys[0][0]), "--json")
    assert said.code == 0 and json.loads(said.out)["judged"] == "file and content", said.err


def test_without_the_identity_or_with_a_stranger_s_nothing_is_written(lab, images, chain, tmp_path):
    _name, _dest, _full, inc = chain
    stranger = tmp_path / "stranger.key"
    assert virtrbd("backup-key", "new", "--out", str(stranger)).code == 0
    before = images.ours()
    target = images.name()
    assert_one_line_error(virtrbd("restore", inc, f"rbd/{target}", env=lab.env), 2, "encrypted", "--identity")
    assert_one_line_error(virtrbd("restore", inc, f"rbd/{target}", "--identity", str(stranger), env=lab.env), 2,
                          "none of the given identities opens it")
    assert_one_line_error(virtrbd("verify", inc, "--identity", str(stranger)), 2, "none of the given identities")
    assert images.ours() == before


def test_a_changed_byte_is_found_with_and_without_the_identity(chain, keys):
    _name, _dest, full, _inc = chain
    with open(full, "r+b") as f:
        f.seek(200000)
        byte = f.read(1)
        f.seek(200000)
        f.write(bytes([byte[0] ^ 1]))
    assert_one_line_error(virtrbd("verify", full), 1, "changed")
    assert_one_line_error(virtrbd("verify", full, "--identity", str(keys[0][0])), 1, "fails its authentication")


def test_raw_merge_and_instant_restore_of_encrypted_backups_are_refused_in_one_line(lab, images, keys, chain,
                                                                                   tmp_path):
    name, dest, _full, inc = chain
    recipient = keys[0][1]
    assert_one_line_error(virtrbd("backup", f"rbd/{name}@s2", str(tmp_path), "--format", "raw",
                                  "--recipient", recipient, env=lab.env), 2, "an encrypted full backup is QCOW2")
    assert list(tmp_path.glob("*.raw")) == []
    assert_one_line_error(virtrbd("restore", "--instant", inc, f"rbd/{images.name()}", env=lab.env), 2,
                          "encrypted", "ciphertext")
    listed = virtrbd("backups", "ls", str(dest), "--json", env=lab.env)
    assert listed.code == 0 and len(json.loads(listed.out)) >= 2, listed.err      # no identity needed to list


@pytest.mark.parametrize("recipient, words", [
    ("age1notarecipient", "not an age recipient"),
    ("AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX", "a private identity"),
])
def test_a_bad_recipient_is_one_line_and_writes_nothing(lab, images, tmp_path, recipient, words):
    name = images.create(4 * MiB, [(0, random_bytes(4096, 1))])
    said = virtrbd("backup", f"rbd/{name}@s1", str(tmp_path), "--recipient", recipient, env=lab.env)
    assert_one_line_error(said, 2, words)
    assert "GFPYYSJZ" not in said.err and list(tmp_path.iterdir()) == []


@pytest.fixture
def signed(lab, images, keys, tmp_path):
    """A host that signs its manifests ([backup] signing_key in a copy of the lab's config): an encrypted
    full and incremental of a fresh image, and the signer verify and restore are to trust."""
    key = tmp_path / "signing.key"
    made = virtrbd("backup-key", "new", "--signing", "--out", str(key), "--json")
    assert made.code == 0, made.err
    signer = json.loads(made.out)["signer"]
    conf = tmp_path / "signing.conf"
    conf.write_text(open(lab.env["VIRTRBD_CONF"]).read() + f"\n[backup]\nsigning_key = {key}\n")
    env = {**lab.env, "VIRTRBD_CONF": str(conf)}
    name = images.create(SIZE, scattered_writes(SIZE, seed=81))
    images.write(name, [(5 * MiB, random_bytes(300000, 82))], snapshot="s2")
    dest = tmp_path / "signed"
    dest.mkdir()
    paths = []
    for args in ((f"rbd/{name}@s1",), (f"rbd/{name}@s2", "--since", f"rbd/{name}@s1")):
        done = virtrbd("backup", args[0], str(dest), *args[1:], "--recipient", keys[0][1], "--json", env=env)
        assert done.code == 0, done.err
        paths.append(json.loads(done.out)["path"])
    return name, signer, env, paths


def test_signed_backups_are_authenticated_without_the_identity_and_forgeries_restore_nothing(
        lab, images, keys, signed, storage, tmp_path):
    name, signer, env, (full, inc) = signed
    for path in (full, inc):
        said = virtrbd("verify", path, "--signer", signer, "--json")
        assert said.code == 0, said.err
        assert json.loads(said.out)["signature"].startswith("authenticated")
    said = virtrbd("verify", inc, env=env)                   # the signing host trusts its own key
    assert said.code == 0 and "authenticated" in said.out, said.err
    target = images.name()
    done = virtrbd("restore", inc, f"rbd/{target}", "--identity", str(keys[0][0]), "--signer", signer, env=lab.env)
    assert done.code == 0, done.err
    assert sha256_of(storage, f"rbd/{target}") == sha256_of(storage, f"rbd/{name}@s2")
    # a forger writes a well-formed backup to the same public recipient: new content, a manifest to match
    forger = tmp_path / "forger"
    forger.mkdir()
    images.write(name, [(0, random_bytes(4 * MiB, 83))], snapshot="s3")
    forged = virtrbd("backup", f"rbd/{name}@s3", str(forger), "--recipient", keys[0][1], "--json", env=lab.env)
    assert forged.code == 0, forged.err
    forged_path = json.loads(forged.out)["path"]
    assert_one_line_error(virtrbd("verify", forged_path, "--signer", signer), 1, "not signed")
    before = images.ours()
    assert_one_line_error(virtrbd("restore", forged_path, f"rbd/{images.name()}", "--identity", str(keys[0][0]),
                                  "--signer", signer, env=lab.env), 1, "not signed")
    # the real full's manifest edited (and resealed) to point at the forger's file: the signature breaks
    data = json.loads(open(full + manifests.SUFFIX).read())
    data["snapshot_time"] = "2001-01-01T00:00:00+00:00"
    data["seal"] = manifests.seal_of(data)
    open(full + manifests.SUFFIX, "w").write(manifests.dumps(data))
    assert_one_line_error(virtrbd("verify", full), 1, "signature does not match")
    assert_one_line_error(virtrbd("restore", inc, f"rbd/{images.name()}", "--identity", str(keys[0][0]),
                                  "--signer", signer, env=lab.env), 1, "signature does not match")
    assert images.ours() == before


def test_an_encrypted_chain_merges_only_with_its_identity_and_stays_encrypted(lab, images, keys, chain, judge,
                                                                             storage, tmp_path):
    name, dest, _full, inc = chain
    (operator, recipient), (escrow, _) = keys
    assert_one_line_error(virtrbd("backups", "merge", inc), 2, "encrypted", "--identity")
    assert_one_line_error(virtrbd("backups", "merge", inc, "--identity", str(operator)), 2,
                          "name the recipients of the merged backup")
    made = virtrbd("backups", "merge", inc, "--identity", str(operator), "--recipient", recipient, "--json")
    assert made.code == 0, made.err
    merged = json.loads(made.out)
    assert merged["format"] == "qcow2" and open(merged["path"], "rb").read(22) == b"age-encryption.org/v1\n"
    decrypt(operator, merged["path"], tmp_path / "merged.qcow2")
    checked = judge.qemu_img("check", "-f", "qcow2", str(tmp_path / "merged.qcow2"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    target = images.name()
    assert virtrbd("restore", merged["path"], f"rbd/{target}", "--identity", str(operator), env=lab.env).code == 0
    assert sha256_of(storage, f"rbd/{target}") == sha256_of(storage, f"rbd/{name}@s2")
    assert_one_line_error(virtrbd("restore", merged["path"], f"rbd/{images.name()}", "--identity", str(escrow),
                                  env=lab.env), 2, "none of the given identities opens it")
