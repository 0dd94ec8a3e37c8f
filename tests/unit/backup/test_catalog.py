"""``virtrbd backups ls``: every backup of a directory with its chain, and every other file named, never guessed."""

from __future__ import annotations

import json
import os
import time

import pytest

from virtrbd.backup import catalog
from virtrbd.errors import BackupError

from ...cli_helpers import assert_one_line_error, virtrbd
from .conftest import apply_changes


@pytest.fixture
def chain(make_full, make_incremental):
    base = os.urandom(256 << 10)
    full = make_full(base, None, fmt="qcow2", snapshot="s1")
    second, changes = apply_changes(base, 256 << 10, [(0, b"a" * 100)], [])
    inc1 = make_incremental(second, changes, "s1", "s2")
    third, changes = apply_changes(second, 256 << 10, [(5000, b"b" * 100)], [])
    inc2 = make_incremental(third, changes, "s2", "s3", snapshot_id=3)
    return full, inc1, inc2


def test_a_chain_is_listed_whole(chain, tmp_path):
    full, inc1, inc2 = chain
    entries = {e.file: e for e in catalog(tmp_path)}
    assert set(entries) == {full.path.name, inc1.path.name, inc2.path.name}
    newest = entries[inc2.path.name]
    assert newest.status == "ok" and newest.kind == "incremental" and newest.parent == inc1.path.name
    assert newest.chain == [full.path.name, inc1.path.name, inc2.path.name]
    assert entries[full.path.name].format == "qcow2" and entries[full.path.name].on_disk > 0
    assert (newest.image, newest.snapshot) == ("rbd/img", "s3")


def test_what_is_wrong_is_named_and_nothing_is_guessed(chain, tmp_path):
    full, inc1, inc2 = chain
    inc1.path.unlink()                                              # a link of the chain gone
    (tmp_path / "rbd~img~s9.raw").write_bytes(b"x")                 # a data file without its manifest
    (tmp_path / "rbd~img~s8.raw.manifest.json").write_text("{")     # a manifest that does not load
    (tmp_path / ".rbd~img~s7.raw.virtrbd-tmp-host-123").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    os.mkfifo(tmp_path / "rbd~img~s6.raw.manifest.json")            # a FIFO where a manifest should be
    entries = {e.file: e for e in catalog(tmp_path)}
    assert entries[inc1.path.name].status == "broken chain" and "missing" in entries[inc1.path.name].problem
    assert entries[inc2.path.name].status == "broken chain"
    assert entries[full.path.name].status == "ok"
    assert entries["rbd~img~s9.raw"].status == "no manifest"
    assert entries["rbd~img~s8.raw"].status == "broken" and "not valid JSON" in entries["rbd~img~s8.raw"].problem
    assert entries["rbd~img~s6.raw"].status == "broken" and "FIFO" in entries["rbd~img~s6.raw"].problem
    assert entries[".rbd~img~s7.raw.virtrbd-tmp-host-123"].status == "unfinished"
    assert entries["notes.txt"].status == "not a backup"
    assert [e.file for e in catalog(tmp_path, image="rbd/img")] == sorted(
        [full.path.name, inc1.path.name, inc2.path.name])


def test_the_command_lists_and_says_when_something_is_broken(chain, tmp_path):
    full, inc1, inc2 = chain
    result = virtrbd("backups", "ls", str(tmp_path))
    assert result.code == 0 and result.err == "", result
    assert full.path.name in result.out and "incremental" in result.out and result.out.startswith("FILE")
    listed = json.loads(virtrbd("backups", "ls", str(tmp_path), "--json").out)
    assert [e["status"] for e in listed] == ["ok", "ok", "ok"]
    full.manifest.write_text("{}")
    broken = virtrbd("backups", "ls", str(tmp_path))
    assert_one_line_error(broken, 1, "3 of 3 entries are broken")
    assert "missing field" in broken.out


def test_a_domains_backup_shows_the_consistency_it_recorded(make_full, tmp_path):
    domain = {"name": "vm1", "uuid": "6a3c1a52-53a4-4c29-b1f5-2d1c0a7e9b10", "consistency": "application",
              "disks": [{"target": "vda", "image": "rbd/img", "file": "rbd~img~s1.raw"}]}
    make_full(b"x" * 5000, domain=domain)
    make_full(b"y" * 5000, image="other")
    entries = {e.file: e for e in catalog(tmp_path)}
    assert (entries["rbd~img~s1.raw"].consistency, entries["rbd~img~s1.raw"].domain) == ("application", "vm1")
    assert entries["rbd~other~s1.raw"].consistency is None
    listed = virtrbd("backups", "ls", str(tmp_path)).out.splitlines()
    assert "CONSISTENCY" in listed[0]
    assert "application (vm1)" in listed[1] and "application" not in listed[2]


@pytest.mark.parametrize("make", [os.mkfifo, lambda p: p.write_text("x"), lambda p: p.symlink_to("/dev/zero")],
                         ids=["FIFO", "file", "device"])
def test_a_directory_that_is_not_one_is_one_line_at_once(tmp_path, make):
    make(tmp_path / "dir")
    started = time.monotonic()
    assert_one_line_error(virtrbd("backups", "ls", str(tmp_path / "dir")), 1, "not a directory")
    assert time.monotonic() - started < 3
    with pytest.raises(BackupError, match="not a directory"):
        catalog(tmp_path / "dir")


def test_rm_refuses_a_backup_others_are_built_on_and_force_takes_them_newest_first(chain, tmp_path):
    full, inc1, inc2 = chain
    refused = virtrbd("backups", "rm", str(full.path))
    assert_one_line_error(refused, 1, "2 backup(s) are built on it", inc1.path.name, inc2.path.name)
    assert full.path.exists() and full.manifest.exists()
    result = virtrbd("backups", "rm", str(inc1.manifest), "--force")
    assert result.code == 0 and result.out.splitlines() == [f"removed {inc2.path.name}", f"removed {inc1.path.name}"]
    assert [e.file for e in catalog(tmp_path)] == [full.path.name] and catalog(tmp_path)[0].status == "ok"
    assert virtrbd("backups", "rm", str(full.path)).code == 0 and catalog(tmp_path) == []


def test_rm_takes_away_what_a_cut_short_removal_left_and_refuses_what_it_cannot_vouch_for(chain, tmp_path):
    full, inc1, inc2 = chain
    inc2.manifest.unlink()                                    # a removal cut short after the commit point
    assert virtrbd("backups", "rm", str(inc2.path)).code == 0 and not inc2.path.exists()
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(virtrbd("backups", "rm", str(tmp_path / "notes.txt")), 1, "not a backup")
    full.manifest.write_text("{")
    assert_one_line_error(virtrbd("backups", "rm", str(full.path)), 1, "broken", "remove it by hand")
    assert_one_line_error(virtrbd("backups", "rm", str(tmp_path / "nothing.raw")), 1, "no such backup")
    assert (tmp_path / "notes.txt").exists() and full.path.exists()
