"""``restore --instant`` against the lab's real Ceph: the image reads the backup at once, a client writing during the
copy keeps every write, a copier SIGKILLed anywhere is finished by ``--resume``, and bad input leaves nothing.

The judges are librbd reads through a connection of the test's own and ``rbd du``; the guest that starts on an
instantly restored image is the guest tests' business (test_guests)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtrbd import backup
from virtrbd.backup import in_use, reader_access

from ..cli_helpers import Result, virtrbd
from .backup_support import MiB, content_of, record_bad_input, scattered_writes

SIZE = 64 * MiB


def status(lab, target: str) -> dict:
    done = virtrbd("restore", "--status", target, "--json", env=lab.env)
    assert done.code == 0, done.err
    return json.loads(done.out)


def wait_committed(lab, target: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (state := status(lab, target)["state"]) != "none":
        assert state in ("copying", "committed"), state           # committed: the file not yet released
        assert time.monotonic() < deadline, f"{target} not committed within {timeout} s"
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def _backups_passable(reachable):
    """Every backup here is written where QEMU's user may pass (the shared ``reachable``)."""


@pytest.fixture
def made(storage, images, tmp_path):
    """A scattered 64 MiB image, its RAW and QCOW2 backups, and its content."""
    name = images.create(SIZE, scattered_writes(SIZE, seed=41, count=40))
    files = {fmt: backup.backup(storage, f"rbd/{name}@s1", tmp_path, format=fmt).path for fmt in ("raw", "qcow2")}
    return files, content_of(storage, f"rbd/{name}@s1"), name


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_the_image_reads_the_backup_at_once_and_holds_it_after_the_commit(lab, storage, images, made, fmt,
                                                                         judge):
    files, content, source = made
    target = images.name()
    started = time.monotonic()
    done = virtrbd("restore", "--instant", str(files[fmt]), f"rbd/{target}", "--background", env=lab.env)
    assert done.code == 0, done.err
    assert "is usable now" in done.out and "checked before use" in done.out
    with storage.cluster.image("rbd", target, read_only=True) as image:
        head = image.read(0, 4 * MiB)
    usable = time.monotonic() - started
    assert head == content[:4 * MiB]
    wait_committed(lab, f"rbd/{target}")
    assert hashlib.sha256(content_of(storage, f"rbd/{target}")).digest() == hashlib.sha256(content).digest()
    assert in_use.importers(files[fmt]) == []
    assert not reader_access.readable_as(lab.config.libvirt.qemu_user, files[fmt])
    assert not os.listxattr(files[fmt])
    used = json.loads(judge.rbd("du", f"rbd/{target}", "--format", "json", progress_option=False).stdout)
    source = json.loads(judge.rbd("du", f"rbd/{source}@s1", "--format", "json",
                                  progress_option=False).stdout)
    assert used["images"][0]["used_size"] <= source["images"][0]["used_size"], (used, source)
    print(f"instant restore {fmt}: usable after {usable:.2f} s (command and first read)")


def test_a_client_writing_during_the_copy_keeps_every_write(lab, storage, images, tmp_path):
    size = 512 * MiB
    name = images.create(size, [(o, os.urandom(4 * MiB)) for o in range(0, size // 2, 4 * MiB)])
    made = backup.backup(storage, f"rbd/{name}@s1", tmp_path).path
    target = images.name()
    rng = random.Random(7)
    writes = [(rng.randrange(0, size - 4096) // 512 * 512, rng.randbytes(4096)) for _ in range(60)]
    expected = bytearray(content_of(storage, f"rbd/{name}@s1"))
    done = virtrbd("restore", "--instant", str(made), f"rbd/{target}", "--background", env=lab.env)
    assert done.code == 0, done.err
    copying = 0
    with storage.cluster.image("rbd", target) as image:
        for offset, data in writes:
            image.write(data, offset)
            expected[offset:offset + len(data)] = data
            copying += status(lab, f"rbd/{target}")["state"] != "none"
    wait_committed(lab, f"rbd/{target}")
    assert copying > 0, "the copy ended before the client wrote: the test proved nothing"
    assert content_of(storage, f"rbd/{target}") == bytes(expected)


def test_a_copier_killed_anywhere_is_finished_by_resume(lab, storage, images, tmp_path):
    size = 512 * MiB
    name = images.create(size, [(o, os.urandom(4 * MiB)) for o in range(0, size, 8 * MiB)])
    made = backup.backup(storage, f"rbd/{name}@s1", tmp_path).path
    content = content_of(storage, f"rbd/{name}@s1")
    rng = random.Random(3)
    resumed = 0
    for _ in range(4):
        target = images.name()
        child = subprocess.Popen([sys.executable, "-m", "virtrbd", "restore", "--instant", str(made),
                                  f"rbd/{target}"], env={**os.environ, **lab.env},
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert "is usable now" in child.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        state = status(lab, f"rbd/{target}")["state"]
        assert state in ("stopped", "committed", "none"), state     # committed: killed before releasing the file
        if state != "none":
            started = time.monotonic()
            background = ["--background"] if resumed % 2 else []
            done = virtrbd("restore", "--resume", f"rbd/{target}", *background, env=lab.env, timeout=120)
            assert done.code == 0, done.err
            if background:
                assert "copying in process" in done.out
                wait_committed(lab, f"rbd/{target}")
            assert time.monotonic() - started < 15, "the dead copier's leftovers were waited out, not evicted"
            resumed += 1
        assert content_of(storage, f"rbd/{target}") == content
        assert in_use.importers(made) == []
        storage.remove_image(target)
    assert resumed >= 2, "the copier was rarely killed mid-copy: the test proved little"


def test_bad_input_is_one_line_and_leaves_no_image(lab, storage, images, made, tmp_path):
    files, content, _source = made
    target = images.name()
    truncated = tmp_path / "cut" / files["raw"].name
    truncated.parent.mkdir()
    for part in (files["raw"], Path(f"{files['raw']}.manifest.json")):
        (truncated.parent / part.name).write_bytes(part.read_bytes())
    os.truncate(truncated, SIZE // 2)
    existing = images.create(MiB, [])
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    for part in (files["raw"], Path(f"{files['raw']}.manifest.json")):
        (closed / part.name).write_bytes(part.read_bytes())
    cases = {
        "instant restore of a truncated file": (str(truncated), target, "truncated"),
        "instant restore onto an existing image": (str(files["raw"]), existing, "already exists"),
        "instant restore of a file QEMU cannot reach": (str(closed / files["raw"].name), target,
                                                        "no search permission"),
    }
    for case, (src, into, words) in cases.items():
        done = virtrbd("restore", "--instant", src, f"rbd/{into}", env=lab.env)
        nothing = not storage.image_exists(target) and in_use.importers(files["raw"]) == []
        record_bad_input(case, done, nothing)
        assert done.code == 1 and len(done.err_lines) == 1 and words in done.err, done.err
        assert nothing
    missing = virtrbd("restore", "--instant", str(tmp_path / "nope.raw"), f"rbd/{target}", env=lab.env)
    assert missing.code == 2 and missing.err_lines == [f"virtrbd: {tmp_path / 'nope.raw'}: no such backup file"]
    # a second --instant onto the same image while the first is not committed
    first = virtrbd("restore", "--instant", str(files["qcow2"]), f"rbd/{target}", "--background", env=lab.env)
    assert first.code == 0, first.err
    again = virtrbd("restore", "--instant", str(files["raw"]), f"rbd/{target}", env=lab.env)
    record_bad_input("a second instant restore onto the same image", again, True)
    assert again.code == 1 and len(again.err_lines) == 1 and "already exists" in again.err
    wait_committed(lab, f"rbd/{target}")
    assert content_of(storage, f"rbd/{target}") == content


def test_a_file_changed_during_the_copy_is_never_committed(lab, storage, images, tmp_path):
    size = 512 * MiB
    name = images.create(size, [(o, os.urandom(4 * MiB)) for o in range(0, size, 8 * MiB)])
    made = backup.backup(storage, f"rbd/{name}@s1", tmp_path).path
    target = images.name()
    child = subprocess.Popen([sys.executable, "-m", "virtrbd", "restore", "--instant", str(made), f"rbd/{target}"],
                             env={**os.environ, **lab.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert "is usable now" in child.stdout.readline()
    os.kill(child.pid, signal.SIGSTOP)
    with open(made, "r+b") as f:                         # someone writes into the backup meanwhile
        f.seek(MiB)
        f.write(b"changed")
    os.kill(child.pid, signal.SIGCONT)
    _out, err = child.communicate(timeout=120)
    nothing = not storage.image_exists(target) and in_use.importers(made) == []
    record_bad_input("a backup file changed during an instant restore", Result(child.returncode, "", err), nothing)
    assert child.returncode == 1 and "changed or replaced" in err and "taken back" in err, err
    assert nothing


def test_a_backup_removed_behind_virtrbds_back_leaves_an_import_that_abort_takes_back(lab, storage, images,
                                                                                        made, tmp_path):
    files, _content, _source = made
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o711)
    for part in (files["raw"], Path(f"{files['raw']}.manifest.json")):
        (copy / part.name).write_bytes(part.read_bytes())
    target = images.name()
    assert virtrbd("restore", "--instant", str(copy / files["raw"].name), f"rbd/{target}", "--no-copy",
                   env=lab.env).code == 0
    (copy / files["raw"].name).unlink()                  # by hand: virtrbd's rm would have refused
    found = status(lab, f"rbd/{target}")
    assert found["state"] == "failed" and "is gone" in found["error"]
    resumed = virtrbd("restore", "--resume", f"rbd/{target}", env=lab.env)
    assert resumed.code == 1 and len(resumed.err_lines) == 1 and "--abort" in resumed.err
    assert virtrbd("restore", "--abort", f"rbd/{target}", env=lab.env).code == 0
    assert not storage.image_exists(target)
    listed = virtrbd("backups", "ls", str(copy), env=lab.env)
    assert "the marker of an instant restore whose backup file is gone" in listed.out
