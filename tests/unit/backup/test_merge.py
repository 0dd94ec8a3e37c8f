"""``backups merge``: a full and its diffs become one new full whose checksum a fresh full would have."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from virtrbd.backup.catalog import catalog
from virtrbd.backup.formats import manifest as manifests
from virtrbd.backup.make import write_full_backup
from virtrbd.backup.memory import MemorySource
from virtrbd.backup.merge import synthesize
from virtrbd.backup.results import BackupPlan, SourceFacts
from virtrbd.errors import BackupError, CorruptBackupError
from virtrbd.spec import ImageSpec

from ...cli_helpers import assert_one_line_error, virtrbd
from .conftest import apply_changes, flip_byte, scattered
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
