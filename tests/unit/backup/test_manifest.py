"""Manifests: names, strict loading, and the chain from an incremental down to its full backup."""

from __future__ import annotations

import json
import stat

import pytest
import xxhash

from virtrbd.backup.formats import manifest as manifests
from virtrbd.errors import CorruptBackupError, UsageError
from virtrbd.spec import ImageSpec

from .conftest import apply_changes


def test_names_cannot_be_read_two_ways():
    spec = ImageSpec("a.b", "c", "s")
    assert manifests.backup_name(spec, "raw") == "a.b~c~s.raw"
    assert manifests.backup_name(ImageSpec("a", "b.c", "s"), "raw") == "a~b.c~s.raw"
    assert manifests.backup_name(spec, "qcow2") == "a.b~c~s.qcow2"
    assert manifests.backup_name(spec, "rbd-diff-v1", since="r") == "a.b~c~r~s.rbddiff"


def test_a_backup_has_a_private_manifest_describing_it(make_full, tmp_path):
    result = make_full(b"x" * 5000, fmt="raw")
    assert result.manifest.name == "rbd~img~s1.raw.manifest.json"
    assert stat.S_IMODE(result.manifest.stat().st_mode) == 0o600
    m = manifests.load(result.manifest)
    assert (m.kind, m.format, m.image, m.snapshot, m.size, m.file_size) == ("full", "raw", "rbd/img", "s1", 5000, 5000)
    chunk_digest = xxhash.xxh3_128(b"x" * 5000).digest()
    assert m.checksum == {"algorithm": "xxh3-128-of-4MiB-chunk-xxh3-128", "chunk_size": 4 << 20,
                          "value": xxhash.xxh3_128(chunk_digest).hexdigest()}
    assert result.checksum == m.checksum["value"]
    assert m.data_path == result.path
    assert manifests.resolve(result.path).file == result.path.name
    assert manifests.resolve(result.manifest).file == result.path.name


def edit(path, **changes):
    """A manifest as another, genuine backup would have it: changed, and sealed again."""
    data = json.loads(path.read_text())
    data.update(changes)
    data["seal"] = manifests.seal_of(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")   # laid out as virtrbd writes it


def test_a_manifest_changed_after_it_was_written_is_refused(make_full):
    result = make_full(b"x" * 5000)
    data = json.loads(result.manifest.read_text())
    data["checksum"]["value"] = "0" * 32               # still well-formed: only the seal can tell
    result.manifest.write_text(json.dumps(data))
    with pytest.raises(CorruptBackupError, match="the manifest is damaged: its fields do not match its seal"):
        manifests.load(result.manifest)


@pytest.mark.parametrize("changes, words", [
    ({"size": "big"}, "field 'size' should be a int"),
    ({"extra": 1}, "unknown fields"),
    ({"manifest_version": 3}, "manifest version 3 is not supported"),
    ({"file_checksum": None}, "missing field 'file_checksum'"),
    ({"file_checksum": {"algorithm": "crc32c", "value": "XYZ"}}, "file_checksum should be"),
    ({"file_checksum": {"algorithm": "md5", "value": "0" * 8}}, "file_checksum should be"),
    ({"kind": "weird"}, "unknown kind"),
    ({"checksum": {"algorithm": "sha256-of-4MiB-chunk-sha256", "value": "0" * 64, "data_crc32c": "xyz"}},
     "data_crc32c should be 8 lowercase hex digits"),
    ({"format": "vmdk"}, "not a full-backup format"),
    ({"file": "../x.raw"}, "plain name"),
    ({"file": "other.raw"}, "describes 'other.raw'"),
    ({"checksum": {"algorithm": "sha256-of-4MiB-chunk-sha256", "value": "xyz"}}, "64 lowercase hex"),
    ({"checksum": {"algorithm": "xxh3-128-of-4MiB-chunk-xxh3-128", "value": "0" * 64}}, "32 lowercase hex"),
    ({"checksum": {"algorithm": "md5", "value": "0" * 64}}, "checksum algorithm"),
    ({"size": 4999}, "RAW backup of a 4999-byte image"),
    ({"image": "rbd/../x"}, "invalid"),
    ({"snapshot": "a b"}, "invalid snapshot name"),
])
def test_bad_manifests_are_refused_in_one_line(make_full, changes, words):
    result = make_full(b"x" * 5000)
    edit(result.manifest, **changes)
    with pytest.raises(CorruptBackupError, match=words) as exc:
        manifests.load(result.manifest)
    assert "\n" not in str(exc.value)


SET = {"name": "vm1", "uuid": "6a3c1a52-53a4-4c29-b1f5-2d1c0a7e9b10", "consistency": "application",
       "disks": [{"target": "vda", "image": "rbd/img", "file": "rbd~img~s1.raw"},
                 {"target": "vdb", "image": "rbd/data", "file": "rbd~data~s1.raw"}]}


def test_a_domain_backup_names_its_whole_set_and_others_say_nothing_of_domains(make_full, tmp_path):
    (tmp_path / "alone").mkdir()
    alone = make_full(b"x" * 5000, dest=tmp_path / "alone")
    assert '"domain"' not in alone.manifest.read_text()             # as every manifest written before it
    one = make_full(b"x" * 5000, domain=SET)
    loaded = manifests.load(one.manifest)
    assert loaded.domain == SET and loaded.to_json() == one.manifest.read_text()


@pytest.mark.parametrize("domain, words", [
    ({**SET, "consistency": "maybe"}, "domain should be"),
    ({**SET, "disks": []}, "domain should be"),
    ({k: v for k, v in SET.items() if k != "uuid"}, "domain should be"),
    ({**SET, "disks": [{"target": "vda", "image": "rbd/img"}]}, "each disk of domain should be"),
    ({**SET, "disks": [{"target": "vda", "image": "rbd/img", "file": "../x.raw"}]}, "each disk of domain"),
    ({**SET, "disks": SET["disks"][1:]}, r"domain does not list this backup \(rbd~img~s1.raw\)"),
])
def test_a_bad_domain_record_is_refused(make_full, domain, words):
    result = make_full(b"x" * 5000)
    edit(result.manifest, domain=domain)
    with pytest.raises(CorruptBackupError, match=words):
        manifests.load(result.manifest)


def test_any_changed_byte_of_a_manifest_is_refused_even_in_its_layout(make_full):
    result = make_full(b"x" * 5000)
    text = result.manifest.read_text()
    result.manifest.write_text(text.replace('"kind"', ' "kind"', 1))        # the same JSON, another byte
    with pytest.raises(CorruptBackupError, match="its bytes are not the ones virtrbd wrote"):
        manifests.load(result.manifest)
    data = json.loads(text)
    data["seal"] = None                                                    # a seal removed is no seal at all
    result.manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    with pytest.raises(CorruptBackupError, match="has no seal"):
        manifests.load(result.manifest)


def test_a_version_1_manifest_is_still_read_with_or_without_its_seal(make_full):
    result = make_full(b"x" * 5000)
    data = json.loads(result.manifest.read_text())
    del data["file_checksum"]
    data["manifest_version"] = 1
    for seal in (manifests.seal_of({k: v for k, v in data.items() if k != "seal"}), None):
        data["seal"] = seal
        result.manifest.write_text(json.dumps(data))                        # the older layout: any
        m = manifests.load(result.manifest)
        assert m.manifest_version == 1 and m.file_checksum is None and m.seal == seal


def test_missing_field_and_non_json(make_full):
    result = make_full(b"x" * 10)
    data = json.loads(result.manifest.read_text())
    del data["image_id"]
    result.manifest.write_text(json.dumps(data))
    with pytest.raises(CorruptBackupError, match="missing field 'image_id'"):
        manifests.load(result.manifest)
    result.manifest.write_text("{not json")
    with pytest.raises(CorruptBackupError, match="not valid JSON"):
        manifests.load(result.manifest)


def test_a_backup_file_without_manifest_is_incomplete(tmp_path):
    (tmp_path / "x.raw").write_bytes(b"x")
    with pytest.raises(CorruptBackupError, match="manifest not found"):
        manifests.resolve(tmp_path / "x.raw")
    with pytest.raises(UsageError, match="no such backup file"):
        manifests.resolve(tmp_path / "nothing.raw")
    with pytest.raises(UsageError, match="a directory"):
        manifests.resolve(tmp_path)


def chain_of_three(make_full, make_incremental):
    base = bytes(1 << 20)
    full = make_full(base, [], fmt="raw", snapshot="s1")
    second, changes = apply_changes(base, 1 << 20, [(0, b"a" * 100)], [])
    inc1 = make_incremental(second, changes, "s1", "s2")
    third, changes = apply_changes(second, 1 << 20, [(5000, b"b" * 100)], [(0, 50)])
    inc2 = make_incremental(third, changes, "s2", "s3", snapshot_id=3)
    return full, inc1, inc2


def test_chain_from_the_newest_incremental(make_full, make_incremental):
    full, inc1, inc2 = chain_of_three(make_full, make_incremental)
    links = manifests.chain(manifests.resolve(inc2.path))
    assert [m.file for m in links] == [full.path.name, inc1.path.name, inc2.path.name]
    assert inc2.path.name == "rbd~img~s2~s3.rbddiff"
    m = manifests.load(inc2.manifest)
    assert m.parent == {"file": inc1.path.name, "checksum": inc1.checksum}
    assert m.from_snapshot == "s2" and m.kind == "incremental" and m.format == "rbd-diff-v1"


def test_chain_with_a_missing_parent(make_full, make_incremental):
    full, inc1, inc2 = chain_of_three(make_full, make_incremental)
    inc1.manifest.unlink()
    with pytest.raises(CorruptBackupError, match="parent backup .* is missing"):
        manifests.chain(manifests.resolve(inc2.path))


def test_chain_with_a_parent_of_another_image(make_full, make_incremental):
    full, inc1, inc2 = chain_of_three(make_full, make_incremental)
    edit(full.manifest, image_id="other")
    with pytest.raises(CorruptBackupError, match="cannot apply to .*a backup of rbd/img \\(id other\\)"):
        manifests.chain(manifests.resolve(inc1.path))


def test_chain_with_a_parent_of_another_snapshot(make_full, make_incremental):
    full, inc1, inc2 = chain_of_three(make_full, make_incremental)
    edit(inc2.manifest, from_snapshot="s9")
    with pytest.raises(CorruptBackupError, match="from @s9 cannot apply"):
        manifests.chain(manifests.resolve(inc2.path))


def test_chain_with_a_replaced_parent(make_full, make_incremental):
    full, inc1, inc2 = chain_of_three(make_full, make_incremental)
    edit(inc1.manifest, checksum={"algorithm": "xxh3-128", "value": "0" * 32})
    with pytest.raises(CorruptBackupError, match="made on top of another"):
        manifests.chain(manifests.resolve(inc2.path))


ENCRYPTION = {"format": "age-encryption.org/v1", "recipients": ["0123456789abcdef"], "plain_size": 5000,
              "head_bytes": 300, "head_sha256": "0" * 64, "rest_sha256": "1" * 64}


@pytest.mark.parametrize("encryption, words", [
    ({**ENCRYPTION, "format": "gpg"}, "encryption should name format age"),
    ({k: v for k, v in ENCRYPTION.items() if k != "rest_sha256"}, "encryption should name"),
    ({**ENCRYPTION, "recipients": []}, "recipients should be fingerprints"),
    ({**ENCRYPTION, "recipients": ["age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"]},
     "recipients should be fingerprints"),
    ({**ENCRYPTION, "plain_size": -1}, "plain_size should be a whole number"),
    ({**ENCRYPTION, "head_sha256": "xyz"}, "digests should be 64 lowercase hex"),
])
def test_a_bad_encryption_record_is_refused(make_full, encryption, words):
    result = make_full(b"x" * 5000, fmt="qcow2")
    edit(result.manifest, encryption=encryption)
    with pytest.raises(CorruptBackupError, match=words):
        manifests.load(result.manifest)


def test_a_raw_manifest_that_says_it_is_encrypted_is_refused(make_full):
    result = make_full(b"x" * 5000)
    edit(result.manifest, encryption=ENCRYPTION)
    with pytest.raises(CorruptBackupError, match="a RAW backup is never encrypted"):
        manifests.load(result.manifest)


def test_a_manifest_without_encryption_stays_as_it_was_written(make_full):
    result = make_full(b"x" * 5000, fmt="qcow2")
    assert '"encryption"' not in result.manifest.read_text()
