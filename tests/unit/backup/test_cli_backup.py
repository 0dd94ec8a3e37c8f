"""virtrbd backup|restore|verify as a user meets them, without a cluster: usage errors, verify, bad backups."""

from __future__ import annotations

import json
import os
import time

import pytest

from ...cli_helpers import assert_one_line_error, virtrbd
from .conftest import data_offset, flip_byte, scattered


@pytest.fixture
def conf(tmp_path):
    """A config whose monitor cannot answer: anything that tries to connect fails slowly and says so."""
    path = tmp_path / "c.conf"
    path.write_text("[ceph]\nmonitors = 192.0.2.1:3300\nclient_id = virt\nkeyring = /nonexistent\n"
                    "client_mount_timeout = 3\n")
    return str(path)


@pytest.mark.parametrize("args, words", [
    (("backup", "rbd/img", "{d}"), ["a snapshot is needed"]),
    (("backup", "rbd/img@s", "{d}/nope"), ["not a directory"]),
    (("backup", "rbd/img@s", "{d}", "--format", "vmdk"), ["invalid choice"]),
    (("backup", "rbd/img@s", "{d}", "--since", "rbd/other@r"), ["another image"]),
    (("backup", "rbd/img@s", "{d}", "--since", "rbd/img@s"), ["is the snapshot being backed up"]),
    (("backup", "rbd/img@s", "{d}", "--since", "rbd/img@r", "--format", "qcow2"), ["--format applies"]),
    (("backup", "rbd/img@s", "{d}", "--cluster-size", "64K"), ["QCOW2 backups only"]),
    (("backup", "rbd/img@s", "{d}", "--format", "qcow2", "--cluster-size", "3K"), ["cluster size"]),
    (("restore", "{d}/none.raw", "rbd/x"), ["no such backup file"]),
    (("restore", "{d}/none.raw", "rbd/x@s"), ["name an image here"]),
    (("verify", "{d}"), ["a directory"]),
])
def test_usage_errors_exit_2_before_connecting(tmp_path, conf, args, words):
    started = time.monotonic()
    result = virtrbd("--config", conf, *(a.format(d=tmp_path) for a in args))
    assert_one_line_error(result, 2, *words)
    assert time.monotonic() - started < 3          # never waited for the unreachable monitor


def test_verify_a_good_backup(make_full, tmp_path):
    content, extents = scattered(3 << 20, seed=1)
    backup = make_full(content, extents, fmt="qcow2")
    result = virtrbd("verify", str(backup.path))
    assert result.code == 0 and result.out.startswith("OK ") and "checksum matches" in result.out
    summary = json.loads(virtrbd("verify", "--json", str(backup.manifest)).out)
    assert summary["checksum"] == backup.checksum and summary["format"] == "qcow2"


def test_verify_a_corrupted_backup_fails_in_one_line(make_full):
    content, extents = scattered(3 << 20, seed=2)
    backup = make_full(content, extents, fmt="raw")
    flip_byte(backup.path, data_offset(backup.path))
    assert_one_line_error(virtrbd("verify", str(backup.path)), 1, "checksum mismatch")


def test_verify_a_truncated_backup_fails_in_one_line(make_full):
    backup = make_full(os.urandom(1 << 20), None, fmt="qcow2")
    os.truncate(backup.path, backup.file_size - 4096)
    assert_one_line_error(virtrbd("verify", str(backup.path)), 1, "truncated")


def test_restore_of_a_bad_backup_fails_before_connecting(make_full, conf):
    backup = make_full(os.urandom(1 << 20), None, fmt="raw")
    os.truncate(backup.path, 1000)
    started = time.monotonic()
    assert_one_line_error(virtrbd("--config", conf, "restore", str(backup.path), "rbd/x"), 1, "truncated")
    assert time.monotonic() - started < 3


def test_restore_with_a_manifest_that_does_not_match(make_full, conf):
    backup = make_full(os.urandom(1 << 20), None, fmt="raw")
    data = json.loads(backup.manifest.read_text())
    data["size"] += 1
    backup.manifest.write_text(json.dumps(data))
    assert_one_line_error(virtrbd("--config", conf, "restore", str(backup.path), "rbd/x"), 1,
                          "should be 1048577 bytes")


def test_verify_refuses_refcounts_qemu_would_refuse(make_full):
    """A refcount block's byte means nothing to the content, everything to QEMU: verify refuses it."""
    backup = make_full(os.urandom(256 << 10), None, fmt="qcow2")
    with open(backup.path, "r+b") as f:
        f.seek(48)
        table = int.from_bytes(f.read(8), "big")           # refcount_table_offset
        f.seek(table)
        block = int.from_bytes(f.read(8), "big")           # the first refcount block
        f.seek(block + (64 << 10) - 2)
        f.write(b"\x00\x01")                               # a cluster no one uses, counted as used
    assert_one_line_error(virtrbd("verify", str(backup.path)), 1, "has refcount 1 but 0 users")


def test_verify_judges_the_file_not_only_its_content(make_full):
    """A byte after the header's end marker: QEMU and virtrbd's reader ignore it, the file checksum does not."""
    backup = make_full(os.urandom(256 << 10), None, fmt="qcow2")
    with open(backup.path, "r+b") as f:
        f.seek(4000)
        f.write(b"\x01")
    assert_one_line_error(virtrbd("verify", str(backup.path)), 1, "checksum mismatch", "file's bytes")


def test_a_backup_older_than_the_file_checksum_verifies_with_a_note(make_full):
    backup = make_full(os.urandom(64 << 10), None, fmt="raw")
    data = json.loads(backup.manifest.read_text())
    del data["file_checksum"], data["seal"]
    data["manifest_version"] = 1
    backup.manifest.write_text(json.dumps(data))
    result = virtrbd("verify", str(backup.path))
    assert result.code == 0 and "checksum matches" in result.out, result
    assert "only its content was checked" in result.out
