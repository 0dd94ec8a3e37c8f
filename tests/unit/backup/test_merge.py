"""``backups merge``: a full and its diffs become one new full whose checksum a fresh full would have."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from virtrbd.backup.catalog import catalog
from virtrbd.backup.formats import manifest as manifests
from virtrbd.backup.formats.rbddiff import DiffReader
from virtrbd.backup.make import write_full_backup
from virtrbd.backup.memory import MemorySource
from virtrbd.backup.merge import merge_diffs, synthesize
from virtrbd.backup.results import BackupPlan, SourceFacts
from virtrbd.errors import BackupError, CorruptBackupError, UsageError
from virtrbd.spec import ImageSpec

from ...cli_helpers import assert_one_line_error, virtrbd
from .conftest import apply_changes, as_before_xxh3, flip_byte, scattered
from .test_prune import restored

SIZE = 3 << 20


@pytest.fixture
def chain(make_full, make_incremental):
    """A full and two diffs; the second one shrinks nothing but zeroes a range and writes beyond 1 MiB."""
    base, extents = scattered(SIZE, seed=3, count=12)
    full = make_full(base, extents, fmt="qcow2", snapshot="s1")
    second, changes = apply_changes(base, SIZE, [(4096, os.urandom(70000))], [(1 << 20, 512 << 10)])
    inc1 = make_incremental(second, changes, "s1", "s2")
    third, changes = apply_changes(second, SIZE + (1 << 20), [(SIZE + 100, b"grown")], [(0, 4096)])
    inc2 = make_incremental(third, changes, "s2", "s3", snapshot_id=3)
    return full, inc1, inc2, third


def fresh_full_checksum(content: bytes, folder) -> str:
    plan = BackupPlan(ImageSpec("rbd", "img", "s3"), folder, "raw")
    return write_full_backup(MemorySource(content, None), SourceFacts(len(content), "abc123", 3), plan).checksum


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_synthetic_full_is_the_full_a_fresh_backup_would_be(chain, tmp_path, tmp_path_factory, fmt):
    full, inc1, inc2, content = chain
    result = synthesize(inc2.path, fmt=fmt)
    assert result.kind == "full" and result.format == fmt and result.size == len(content)
    assert result.checksum == fresh_full_checksum(content, tmp_path_factory.mktemp("fresh"))
    assert restored(result.path) == content
    m = manifests.resolve(result.path)
    assert m.made_from == [full.path.name, inc1.path.name, inc2.path.name] and m.snapshot == "s3"
    assert [e.status for e in catalog(tmp_path)] == ["ok"] * 4               # no scratch file left
    if fmt == "qcow2":
        check = subprocess.run(["qemu-img", "check", str(result.path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_damaged_link_stops_the_merge_and_leaves_nothing(chain, tmp_path):
    full, inc1, inc2, _ = chain
    flip_byte(inc1.path, inc1.file_size - 50)
    with pytest.raises(CorruptBackupError, match="checksum mismatch"):
        synthesize(inc2.path)
    assert sorted(os.listdir(tmp_path)) == sorted(
        p.name for b in (full, inc1, inc2) for p in (b.path, b.manifest))


def test_the_command_and_its_refusals(chain, tmp_path):
    full, inc1, inc2, content = chain
    result = virtrbd("backups", "merge", str(inc1.path), "--json")
    assert result.code == 0, result
    made = json.loads(result.out)
    assert made["format"] == "raw" and made["image"] == "rbd/img@s2"
    again = virtrbd("backups", "merge", str(inc1.path))
    assert_one_line_error(again, 1, "exists already")
    assert_one_line_error(virtrbd("backups", "merge", made["path"]), 1, "nothing to merge")
    with pytest.raises(BackupError, match="nothing to merge"):
        synthesize(made["path"], fmt="raw")


# --- diffs merged into one (--from OLDER) ---------------------------------------------------------------------

def applied(base: bytes, diff) -> bytes:
    """What ``rbd import-diff`` makes of an image holding ``base`` with this diff."""
    with open(diff, "rb") as f:
        reader = DiffReader(f, str(diff))
        size = reader.header.size
        data = bytearray(base[:size].ljust(size, b"\0"))
        for record in reader.records():
            data[record.offset:record.offset + record.length] = record.data or bytes(record.length)
    return bytes(data)


def rbd_merged(first, second, out) -> None:
    done = subprocess.run(["rbd", "merge-diff", str(first), str(second), str(out), "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def shrinking(make_full, make_incremental):
    """s1 of 3 MiB; s2 cut to 1 MiB; s3 grown to 4 MiB again with a little written: what was cut reads zero."""
    base, extents = scattered(SIZE, seed=5, count=20)
    full = make_full(base, extents, snapshot="s1")
    second, changes = apply_changes(base, 1 << 20, [(100, b"x" * 5000)], [])
    inc1 = make_incremental(second, changes, "s1", "s2")
    third, changes = apply_changes(second, 4 << 20, [(3 << 20, b"y" * 9000)], [(0, 50)])
    inc2 = make_incremental(third, changes, "s2", "s3", snapshot_id=3)
    return full, inc1, inc2, base, third


@pytest.mark.parametrize("history", ["chain", "shrinking"])
def test_diffs_merged_into_one_give_what_rbd_merge_diff_gives(request, history, tmp_path, tmp_path_factory):
    full, inc1, inc2, *rest = request.getfixturevalue(history)
    base, newest = restored(full.path), restored(inc2.path)
    result = merge_diffs(inc2.path, "s1")
    assert (result.kind, result.from_snapshot, result.format) == ("incremental", "s1", "rbd-diff-v1")
    m = manifests.resolve(result.path)
    assert m.made_from == [inc1.path.name, inc2.path.name] and m.parent["file"] == full.path.name
    assert applied(base, result.path) == newest
    theirs = tmp_path_factory.mktemp("rbd") / "merged"
    rbd_merged(inc1.path, inc2.path, theirs)
    assert applied(base, theirs) == applied(base, result.path)
    assert restored(result.path) == newest                              # a chain of its own: full + merged
    assert [e.status for e in catalog(tmp_path)] == ["ok"] * 4


def test_merged_diffs_refuse_what_they_cannot_make(chain):
    full, inc1, inc2, _ = chain
    with pytest.raises(UsageError, match=r"@s0 is not an earlier point of its chain \(@s1, @s2, @s3\)"):
        merge_diffs(inc2.path, "s0")
    with pytest.raises(BackupError, match="is the diff from @s2 already: nothing to merge"):
        merge_diffs(inc2.path, "s2")
    assert_one_line_error(virtrbd("backups", "merge", str(inc2.path), "--format", "rbddiff"), 2, "needs --from")
    assert_one_line_error(virtrbd("backups", "merge", str(inc2.path), "--from", "s1", "--format", "qcow2"), 2,
                          "--from makes one diff")
    made = virtrbd("backups", "merge", str(inc2.path), "--from", "@s1")
    assert made.code == 0 and "one diff of rbd/img@s3 from @s1" in made.out, made.err


@pytest.mark.parametrize("data_crc", [True, False], ids=["SHA-256 and data CRC", "SHA-256 only"])
def test_a_chain_on_a_full_from_the_sha256_days_merges_too(chain, tmp_path_factory, data_crc):
    """The oldest fulls are checked whole chunk by whole chunk: through the scratch file; the others streamed."""
    full, inc1, inc2, content = chain
    as_before_xxh3(full.manifest, restored(full.path), data_crc=data_crc)
    relinked = json.loads(inc1.manifest.read_text())                 # its diff was made on that full
    relinked["parent"]["checksum"] = manifests.load(full.manifest).checksum["value"]
    relinked["seal"] = manifests.seal_of(relinked)
    inc1.manifest.write_text(manifests.dumps(relinked))
    result = synthesize(inc2.path)
    assert result.checksum == fresh_full_checksum(content, tmp_path_factory.mktemp("fresh"))
    assert restored(result.path) == content
    flip_byte(full.path, full.file_size // 2)        # inside a data cluster of the full
    os.unlink(result.path)
    os.unlink(result.manifest)
    with pytest.raises(CorruptBackupError, match="checksum|CRC"):
        synthesize(inc2.path)


@pytest.fixture
def sealed_chain(make_full, make_incremental):
    """The chain above, encrypted to one recipient and signed; with the identity and the signing key."""
    from virtrbd.backup.sealing.keys import Identity
    from virtrbd.backup.sealing.signing import SigningKey
    identity, key = Identity.generate(), SigningKey(os.urandom(32))
    sealed = {"recipients": (identity.recipient,), "signing_key": key}
    base, extents = scattered(SIZE, seed=5, count=12)
    make_full(base, extents, fmt="qcow2", snapshot="s1", **sealed)
    second, changes = apply_changes(base, SIZE, [(4096, os.urandom(70000))], [(1 << 20, 512 << 10)])
    make_incremental(second, changes, "s1", "s2", **sealed)
    third, changes = apply_changes(second, SIZE, [(2 << 20, os.urandom(9000))], [(0, 4096)])
    inc2 = make_incremental(third, changes, "s2", "s3", snapshot_id=3, **sealed)
    return inc2, third, identity, key


def test_an_encrypted_chain_merges_with_its_identity_into_an_encrypted_signed_backup(sealed_chain, tmp_path,
                                                                                    tmp_path_factory):
    from virtrbd.backup.memory import MemorySink
    from virtrbd.backup.merge import Keys
    from virtrbd.backup.restore import plan_restore, restore_chain
    from virtrbd.backup.trust import Trust
    inc2, content, identity, key = sealed_chain
    trust = Trust((key.signer,))
    with pytest.raises(UsageError, match="give the identity that opens it"):
        synthesize(inc2.path, keys=Keys(trust=trust))
    with pytest.raises(UsageError, match="name the recipients of the merged backup"):
        synthesize(inc2.path, keys=Keys(identities=[identity], trust=trust))
    keys = Keys(identities=[identity], recipients=(identity.recipient,), trust=trust, signing_key=key)
    with pytest.raises(UsageError, match="an encrypted full backup is QCOW2"):
        synthesize(inc2.path, fmt="raw", keys=keys)
    full = synthesize(inc2.path, keys=keys)
    assert full.format == "qcow2" and full.path.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert full.checksum == fresh_full_checksum(content, tmp_path_factory.mktemp("fresh"))
    diff = merge_diffs(inc2.path, "s1", keys=keys)
    for made in (full, diff):
        plan = plan_restore(made.path, [identity], trust=trust)
        assert plan.newest.encryption is not None and plan.newest.signature["signer"] == str(key.signer)
    plan = plan_restore(diff.path, [identity], trust=trust)
    sink = MemorySink(SIZE)
    restore_chain(plan, sink)
    assert bytes(sink.data) == content
