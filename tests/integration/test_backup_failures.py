"""Backups that go wrong: killed mid-way, bad files, bad manifests; memory stays bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtrbd import backup
from virtrbd.backup.files import TEMP_MARK

from ..cli_helpers import assert_one_line_error, virtrbd
from ..ledger import LEDGER
from .backup_support import MiB, random_bytes, record_bad_input, sha256_of

BIG = 512 * MiB          # image size for the tests that need a backup to take a while
BIG_DATA = 192 * MiB     # of which written (memory-backed lab: keep it modest)


@pytest.fixture
def big_image(images):
    writes = [(offset, random_bytes(4 * MiB, offset)) for offset in range(0, 2 * BIG_DATA, 8 * MiB)]
    return images.create(BIG, writes)


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "virtrbd", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_temp_with_data(dest: Path, process: subprocess.Popen, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in dest.iterdir():
            if TEMP_MARK in entry.name and entry.stat().st_blocks > 0:
                return entry
        if process.poll() is not None:
            pytest.fail(f"the backup ended before it could be interrupted: {process.communicate()}")
        time.sleep(0.001)
    pytest.fail("no temporary file with data appeared")


def test_killed_backup_leaves_no_final_file_and_the_next_run_cleans_up(big_image, lab, tmp_path):
    process = start(["backup", f"rbd/{big_image}@s1", str(tmp_path), "--format", "qcow2"], lab.env)
    temp = wait_for_temp_with_data(tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert [p.name for p in tmp_path.iterdir()] == [temp.name]        # only the hidden temp file
    assert temp.name.startswith(".") and temp.stat().st_mode & 0o077 == 0
    done = virtrbd("backup", f"rbd/{big_image}@s1", str(tmp_path), "--format", "qcow2", env=lab.env)
    assert done.code == 0, done.err
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"rbd~{big_image}~s1.qcow2",
                                                          f"rbd~{big_image}~s1.qcow2.manifest.json"]


def test_terminated_backup_removes_its_temp_file(big_image, lab, tmp_path):
    process = start(["backup", f"rbd/{big_image}@s1", str(tmp_path)], lab.env)
    wait_for_temp_with_data(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == "virtrbd: interrupted"
    assert list(tmp_path.iterdir()) == []


def restore_interrupted(backup_file, target: str, images, lab, sig: int) -> subprocess.Popen:
    """A restore into ``target``, sent ``sig`` once its temporary image exists; waited for."""
    process = start(["restore", str(backup_file), f"rbd/{target}"], lab.env)
    deadline = time.monotonic() + 30
    while not images.leftovers(target) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    time.sleep(0.05)
    process.send_signal(sig)
    process.communicate(timeout=60)
    return process


def test_terminated_restore_leaves_no_image(storage, images, big_image, lab, tmp_path):
    result = backup.backup(storage, f"rbd/{big_image}@s1", tmp_path)
    target = images.name()
    process = restore_interrupted(result.path, target, images, lab, signal.SIGTERM)
    assert process.returncode == 130
    assert target not in storage.list_images() and images.leftovers(target) == []


def test_a_killed_restore_leaves_its_temporary_image_and_the_next_restore_removes_it(storage, images, big_image,
                                                                                    lab, tmp_path):
    result = backup.backup(storage, f"rbd/{big_image}@s1", tmp_path)
    target = images.name()
    restore_interrupted(result.path, target, images, lab, signal.SIGKILL)
    left = images.leftovers(target)
    assert len(left) == 1 and target not in storage.list_images()      # SIGKILL: nothing could clean up
    # the dead client's watch stays on the image until the OSD expires it (osd_client_watch_timeout, 30 s);
    # until then it looks like a restore still running, and is left alone
    deadline = time.monotonic() + 60
    while watchers(storage, left[0]) and time.monotonic() < deadline:
        time.sleep(1)
    done = virtrbd("restore", str(result.path), f"rbd/{target}", env=lab.env)
    assert done.code == 0, done.err
    assert images.leftovers(target) == []
    assert sha256_of(storage, f"rbd/{target}") == sha256_of(storage, f"rbd/{big_image}@s1")


def test_a_restore_removes_only_the_unopened_temporary_images_of_its_pool(storage, images, lab, tmp_path):
    """Another target's leftover goes too; one a client has open (a restore running now) stays."""
    source = images.create(4 * MiB, [(0, random_bytes(MiB, 9))])
    result = backup.backup(storage, f"rbd/{source}@s1", tmp_path)
    running_target, left_target = images.name(), images.name()
    running, left = f"{running_target}.virtrbd-restore-0123abcd", f"{left_target}.virtrbd-restore-4567cdef"
    storage.create_image(running, 4 * MiB)
    storage.create_image(left, 4 * MiB)
    with storage.cluster.image("rbd", running):                   # as the restore writing it has it
        backup.restore(storage, result.path, f"rbd/{images.name()}")
        assert images.leftovers(running_target) == [running] and images.leftovers(left_target) == []
    backup.restore(storage, result.path, f"rbd/{images.name()}")   # closed now: nobody's
    assert images.leftovers(running_target) == []


def watchers(storage, name: str) -> list:
    with storage.cluster.image("rbd", name, read_only=True) as image:
        return list(image.watchers_list())


def test_peak_memory_of_backup_and_restore_stays_bounded(storage, images, big_image, lab, tmp_path):
    """VmHWM as the command reports it (ru_maxrss of a forked child would include the parent's peak)."""
    for fmt in ("raw", "qcow2"):
        (tmp_path / fmt).mkdir()
        result = virtrbd("backup", f"rbd/{big_image}@s1", str(tmp_path / fmt), "--format", fmt, "--json",
                         env=lab.env)
        assert result.code == 0, result.err
        summary = json.loads(result.out)
        assert summary["data_bytes"] == BIG_DATA
        assert summary["peak_rss_bytes"] <= 128 * MiB, f"{fmt}: peak RSS {summary['peak_rss_bytes'] >> 20} MiB"
        restored = virtrbd("restore", summary["path"], f"rbd/{images.name()}", "--json", env=lab.env)
        assert restored.code == 0, restored.err
        peak = json.loads(restored.out)["peak_rss_bytes"]
        assert peak <= 128 * MiB, f"restore from {fmt}: peak RSS {peak >> 20} MiB"


def corrupt_middle(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        offset = os.lseek(fd, path.stat().st_size // 2, os.SEEK_DATA)
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 1]), offset)
    finally:
        os.close(fd)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_corrupted_backup_restores_nothing(storage, images, lab, tmp_path, fmt):
    name = images.create(32 * MiB, [(0, random_bytes(32 * MiB, 3))])
    result = backup.backup(storage, f"rbd/{name}@s1", tmp_path, format=fmt)
    corrupt_middle(result.path)
    target = images.name()
    before = images.ours()
    restored = virtrbd("restore", str(result.path), f"rbd/{target}", env=lab.env)
    record_bad_input(f"restore of a corrupted {fmt} backup", restored, images.ours() == before)
    assert_one_line_error(restored, 1, "checksum mismatch")
    assert images.ours() == before
    verified = virtrbd("verify", str(result.path))
    record_bad_input(f"verify of a corrupted {fmt} backup", verified, True)
    assert_one_line_error(verified, 1, "checksum mismatch")


def test_corrupted_backup_does_not_touch_the_image_it_would_replace(storage, images, lab, tmp_path):
    name = images.create(16 * MiB, [(0, random_bytes(16 * MiB, 4))])
    result = backup.backup(storage, f"rbd/{name}@s1", tmp_path, format="qcow2")
    corrupt_middle(result.path)
    target = images.create(16 * MiB, [(0, b"precious")], snapshot=None)
    digest = sha256_of(storage, f"rbd/{target}")
    restored = virtrbd("restore", "--force", str(result.path), f"rbd/{target}", env=lab.env)
    untouched = sha256_of(storage, f"rbd/{target}") == digest and images.leftovers(target) == []
    record_bad_input("restore --force of a corrupted backup over an image", restored, untouched)
    LEDGER.decoy("the image a corrupted restore --force would have replaced", untouched)
    assert_one_line_error(restored, 1, "checksum mismatch")
    assert untouched


@pytest.mark.parametrize("damage, words", [
    (lambda r: os.truncate(r.path, r.file_size - 1), "truncated"),
    (lambda r: os.truncate(r.path, 100), "truncated"),
    (lambda r: r.manifest.write_text(r.manifest.read_text().replace('"size": ', '"size": 1')), "manifest"),
    (lambda r: r.manifest.write_text("{}"), "missing field"),
    (lambda r: r.manifest.unlink(), "manifest not found"),
])
def test_bad_files_fail_in_one_line_before_the_cluster_is_touched(storage, images, lab, tmp_path, damage, words):
    name = images.create(16 * MiB, [(0, random_bytes(MiB, 5))])
    result = backup.backup(storage, f"rbd/{name}@s1", tmp_path, format="qcow2")
    damage(result)
    target = images.name()
    before = images.ours()
    restored = virtrbd("restore", str(result.path), f"rbd/{target}", env=lab.env)
    record_bad_input(f"restore of a backup with a bad file or manifest ({words})", restored, images.ours() == before)
    assert_one_line_error(restored, 1, words)
    assert images.ours() == before
