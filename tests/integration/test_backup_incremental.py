"""Incremental backups: rbd diff v1 streams of exact changes, restorable as a chain and by rbd import-diff."""

from __future__ import annotations

import json

import pytest

from virtrbd import backup, errors
from virtrbd.backup.formats import manifest as manifests

from ..cli_helpers import assert_one_line_error, virtrbd
from ..ledger import LEDGER
from .backup_support import CHUNK, MiB, content_of, random_bytes, record_bad_input, scattered_writes, sha256_of


def four_snapshots(images, seed: int = 10) -> tuple[str, list[int]]:
    """s1..s4 with writes, a discard and a resize between them; returns the name and the bytes written per step."""
    name = images.create(32 * MiB, scattered_writes(32 * MiB, seed=seed))
    step2 = [(5 * MiB + 3, random_bytes(70000, seed + 1)), (20 * MiB, random_bytes(4096, seed + 2))]
    images.write(name, step2, discards=[(CHUNK, CHUNK)], snapshot="s2")
    step3 = [(0, random_bytes(512, seed + 3)), (31 * MiB, random_bytes(MiB, seed + 4))]
    images.write(name, step3, snapshot="s3")
    images.resize(name, 40 * MiB + 512)
    step4 = [(40 * MiB, random_bytes(512, seed + 5)), (2 * MiB, bytes(8192))]
    images.write(name, step4, snapshot="s4")
    return name, [sum(len(d) for _, d in step) for step in (step2, step3, step4)]


def test_chain_of_incrementals_restores_each_snapshot(storage, images, tmp_path):
    name, written = four_snapshots(images)
    full = backup.backup(storage, f"rbd/{name}@s1", tmp_path, format="qcow2")
    steps = [full]
    for older, newer in (("s1", "s2"), ("s2", "s3"), ("s3", "s4")):
        steps.append(backup.backup(storage, f"rbd/{name}@{newer}", tmp_path, since=f"rbd/{name}@{older}"))
    for result, changed in zip(steps[1:], written, strict=True):
        assert result.kind == "incremental" and result.format == "rbd-diff-v1"
        assert result.file_size <= 1.1 * changed + 4096       # exact extents, not whole objects
    assert manifests.load(steps[2].manifest).parent == {"file": steps[1].path.name, "checksum": steps[1].checksum}
    for index, snap in enumerate(("s2", "s3", "s4"), start=1):
        target = images.name()
        restored = backup.restore(storage, steps[index].path, f"rbd/{target}")
        assert restored.chain == [str(s.path) for s in steps[:index + 1]] and restored.snapshot == snap
        same = sha256_of(storage, f"rbd/{target}") == sha256_of(storage, f"rbd/{name}@{snap}")
        assert LEDGER.restore(f"full backup + {index} incremental(s), restored as @{snap}", same), snap
    for result in steps[1:]:
        assert backup.verify(result.path, against=f"rbd/{name}@{manifests.load(result.manifest).snapshot}",
                             storage=storage).kind == "incremental"


def test_rbd_import_diff_applies_our_incrementals(storage, images, judge, lab, tmp_path):
    name, _ = four_snapshots(images)
    full = backup.backup(storage, f"rbd/{name}@s1", tmp_path)
    inc2 = backup.backup(storage, f"rbd/{name}@s2", tmp_path, since=f"rbd/{name}@s1")
    inc3 = backup.backup(storage, f"rbd/{name}@s3", tmp_path, since=f"rbd/{name}@s2")
    target = images.name()
    made = virtrbd("restore", str(full.path), f"rbd/{target}", "--snapshot", env=lab.env)
    assert made.code == 0, made.err
    for inc, snap in ((inc2, "s2"), (inc3, "s3")):
        judge.rbd("import-diff", str(inc.path), f"rbd/{target}")       # Ceph's own reader applies our stream
        same = sha256_of(storage, f"rbd/{target}@{snap}") == sha256_of(storage, f"rbd/{name}@{snap}")
        assert LEDGER.restore(f"rbd import-diff of our incremental to @{snap}", same)


def test_incremental_needs_the_older_backup_in_dest(storage, images, lab, tmp_path):
    name, _ = four_snapshots(images)
    result = virtrbd("backup", f"rbd/{name}@s2", str(tmp_path), "--since", f"rbd/{name}@s1", env=lab.env)
    assert_one_line_error(result, 1, f"no backup of rbd/{name}@s1")
    assert list(tmp_path.iterdir()) == []


def test_since_must_be_older(storage, images, tmp_path):
    name, _ = four_snapshots(images)
    backup.backup(storage, f"rbd/{name}@s3", tmp_path)
    with pytest.raises(errors.UsageError, match="is not older"):
        backup.backup(storage, f"rbd/{name}@s2", tmp_path, since=f"rbd/{name}@s3")


def test_a_diff_for_another_image_is_refused_and_nothing_is_written(storage, images, lab, tmp_path):
    ours, _ = four_snapshots(images)
    theirs, _ = four_snapshots(images, seed=20)
    full = backup.backup(storage, f"rbd/{ours}@s1", tmp_path)
    other_full = backup.backup(storage, f"rbd/{theirs}@s1", tmp_path)
    alien = backup.backup(storage, f"rbd/{theirs}@s2", tmp_path, since=f"rbd/{theirs}@s1")
    # a mixed-up directory: the other image's diff now claims our full backup as its parent
    data = json.loads(alien.manifest.read_text())
    data["parent"] = {"file": full.path.name, "checksum": full.checksum}
    alien.manifest.write_text(manifests.dumps(data))    # a genuine manifest, only of the wrong chain
    target = images.name()
    before = images.ours()
    result = virtrbd("restore", str(alien.path), f"rbd/{target}", env=lab.env)
    record_bad_input("restore of a diff whose parent is another image's backup", result, images.ours() == before)
    assert_one_line_error(result, 1, "cannot apply to", f"a backup of rbd/{ours}")
    assert images.ours() == before
    assert other_full.path.exists()


def test_diff_file_swapped_for_another_images_diff(storage, images, lab, tmp_path):
    ours, _ = four_snapshots(images)
    theirs, _ = four_snapshots(images, seed=20)
    backup.backup(storage, f"rbd/{ours}@s1", tmp_path)
    inc = backup.backup(storage, f"rbd/{ours}@s2", tmp_path, since=f"rbd/{ours}@s1")
    other = tmp_path / "other"
    other.mkdir()
    backup.backup(storage, f"rbd/{theirs}@s1", other)
    alien = backup.backup(storage, f"rbd/{theirs}@s2", other, since=f"rbd/{theirs}@s1")
    inc.path.write_bytes(alien.path.read_bytes())
    data = json.loads(inc.manifest.read_text())
    data["file_size"] = alien.file_size                 # even with a consistent size, the content is caught
    inc.manifest.write_text(manifests.dumps(data))
    target = images.name()
    before = images.ours()
    result = virtrbd("restore", str(inc.path), f"rbd/{target}", env=lab.env)
    record_bad_input("restore of another image's diff under our diff's name", result, images.ours() == before)
    assert_one_line_error(result, 1, "checksum mismatch")
    assert images.ours() == before
    assert content_of(storage, f"rbd/{ours}@s2")       # the source is untouched


def test_writes_into_objects_that_were_empty_cost_only_their_bytes(storage, images, judge, tmp_path):
    """librbd reports an object created since the older snapshot as changed whole; only its data is sent."""
    name = images.create(64 * MiB, [(0, random_bytes(MiB, 40))])
    images.write(name, [], snapshot="s2")
    writes = [(offset * MiB + 12345, random_bytes(4096, 41 + offset)) for offset in range(4, 64, 6)]
    images.write(name, writes, snapshot="s3")
    backup.backup(storage, f"rbd/{name}@s2", tmp_path)
    result = backup.backup(storage, f"rbd/{name}@s3", tmp_path, since=f"rbd/{name}@s2")
    changed = sum(len(data) for _, data in writes)
    assert result.file_size <= 1.1 * changed, (result.file_size, changed)
    restored = images.name()
    backup.restore(storage, result.path, f"rbd/{restored}")
    same = sha256_of(storage, f"rbd/{restored}") == sha256_of(storage, f"rbd/{name}@s3")
    assert LEDGER.restore("incremental of writes into objects that were empty", same)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_synthetic_full_has_the_checksum_of_a_fresh_full_backup(storage, images, judge, tmp_path, fmt):
    """backups merge, judged against the cluster: the same snapshot backed up fresh, and restored."""
    name, _ = four_snapshots(images)
    chain_dir, fresh_dir = tmp_path / "chain", tmp_path / "fresh"
    chain_dir.mkdir()
    fresh_dir.mkdir()
    backup.backup(storage, f"rbd/{name}@s1", chain_dir, format="qcow2")
    for older, newer in (("s1", "s2"), ("s2", "s3"), ("s3", "s4")):
        newest = backup.backup(storage, f"rbd/{name}@{newer}", chain_dir, since=f"rbd/{name}@{older}")
    made = virtrbd("backups", "merge", str(newest.path), "--format", fmt, "--json")
    assert made.code == 0, made.err
    synthetic = json.loads(made.out)
    fresh = backup.backup(storage, f"rbd/{name}@s4", fresh_dir, format=fmt)
    assert synthetic["checksum"] == fresh.checksum and synthetic["size"] == fresh.size
    if fmt == "qcow2":
        check = judge.qemu_img("check", synthetic["path"])
        assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
        compare = judge.qemu_img("compare", "-f", "qcow2", "-F", "qcow2", synthetic["path"], str(fresh.path))
        assert compare.returncode == 0 and "Images are identical" in compare.stdout, compare.stdout
    target = images.name()
    backup.restore(storage, synthetic["path"], f"rbd/{target}")
    assert LEDGER.restore(f"restore of a synthetic {fmt} full",
                          sha256_of(storage, f"rbd/{target}") == sha256_of(storage, f"rbd/{name}@s4"))


def test_a_merged_diff_is_what_rbd_merge_diff_makes_applied_by_rbd_import_diff(storage, images, judge, lab,
                                                                               tmp_path):
    """backups merge --from, judged by Ceph's own tools: both merged diffs applied by rbd import-diff onto the
    same base give the snapshot (writes, a discard and a resize between the points)."""
    name, _ = four_snapshots(images)
    full = backup.backup(storage, f"rbd/{name}@s1", tmp_path)
    diffs = [backup.backup(storage, f"rbd/{name}@{newer}", tmp_path, since=f"rbd/{name}@{older}")
             for older, newer in (("s1", "s2"), ("s2", "s3"), ("s3", "s4"))]
    made = virtrbd("backups", "merge", str(diffs[-1].path), "--from", "s1", "--json", env=lab.env)
    assert made.code == 0, made.err
    ours = json.loads(made.out)["path"]
    theirs = tmp_path / "rbd-merged" / "s1-s4"
    theirs.parent.mkdir()
    judge.rbd("merge-diff", str(diffs[0].path), str(diffs[1].path), str(theirs) + ".half")
    judge.rbd("merge-diff", str(theirs) + ".half", str(diffs[2].path), str(theirs))
    for label, merged in (("virtrbd's", ours), ("rbd merge-diff's", str(theirs))):
        target = images.name()
        assert virtrbd("restore", str(full.path), f"rbd/{target}", "--snapshot", env=lab.env).code == 0
        judge.rbd("import-diff", merged, f"rbd/{target}")
        same = sha256_of(storage, f"rbd/{target}@s4") == sha256_of(storage, f"rbd/{name}@s4")
        assert LEDGER.restore(f"rbd import-diff of {label} merged diff s1->s4", same), label
