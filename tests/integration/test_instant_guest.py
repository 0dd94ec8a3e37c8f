"""A real Linux guest on an instantly restored disk (issue 20): it boots before the copy has finished, reads its
files with valid checksums and writes records while copiers are SIGKILLed and resumed; after the commit the
image holds the backup plus exactly the guest's writes, judged by ``debugfs``/``e2fsck`` on a RAW backup of it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

from virtrbd import backup

from ..cli_helpers import virtrbd
from .backup_support import content_of
from .test_guests import golden, guests, installed_hook, records_in, vm  # noqa: F401 - fixtures


def in_guest(lab, name: str, *argv: str) -> str:
    done = vm(lab, "exec", name, "--", *argv)
    assert done.code == 0, done.err
    return done.out.strip()


def status(lab, target: str) -> dict:
    done = virtrbd("restore", "--status", target, "--json", env=lab.env)
    assert done.code == 0, done.err
    return json.loads(done.out)


def test_a_guest_runs_on_an_instant_restore_while_killed_copiers_are_resumed(
        lab, golden, guests, storage, reachable):  # noqa: F811 - the fixtures imported above
    first, second = guests(2)
    disk, back = f"rbd/{first}-disk", f"rbd/{first}-back"
    assert vm(lab, "create", first, "--disk", disk, "--clone-of", golden).code == 0
    in_guest(lab, first, "records", "start", "vda")
    time.sleep(2)
    in_guest(lab, first, "records", "stop")
    before = int(in_guest(lab, first, "records", "durable"))
    assert vm(lab, "stop", first).code == 0
    storage.create_snapshot(f"{disk}@s1")
    made = backup.backup(storage, f"{disk}@s1", reachable).path              # RAW: holes claimed under a guest
    _, backed_up = records_in(made)
    assert len(backed_up) == before > 0
    wanted = hashlib.sha256(made.read_bytes()).hexdigest()

    started = virtrbd("restore", "--instant", str(made), back, "--no-copy", env=lab.env)
    assert started.code == 0, started.err                # usable; the copy waits until the guest runs
    storage.create_snapshot(f"{back}@before")            # what the image holds before the guest wrote
    assert vm(lab, "create", second, "--disk", back).code == 0
    assert status(lab, back)["state"] == "stopped"       # the guest runs before the copy has even begun
    checked = in_guest(lab, second, "sh", "-c", "cd /mnt/vda && sha256sum -c CHECKSUMS")
    assert checked.count(": OK") >= 2, checked
    assert in_guest(lab, second, "records", "last", "vda").split() == ["vda", str(before)]
    in_guest(lab, second, "records", "start", "vda")

    rng = random.Random(20)
    for _ in range(3):                                   # copiers killed at random points, the guest writing
        child = subprocess.Popen([sys.executable, "-m", "virtrbd", "restore", "--resume", back],
                                 env={**os.environ, **lab.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.1, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
    resumed = virtrbd("restore", "--resume", back, env=lab.env, timeout=300)
    if resumed.code != 0:                                # the last killed one may have committed already
        assert "no instant restore was started" in resumed.err, resumed.err
    assert status(lab, back)["state"] == "none"
    durable = int(in_guest(lab, second, "records", "durable"))
    time.sleep(1)
    assert int(in_guest(lab, second, "records", "durable")) > durable, "the guest's writes stalled"
    in_guest(lab, second, "records", "stop")
    after = int(in_guest(lab, second, "records", "durable"))
    assert vm(lab, "stop", second).code == 0

    storage.create_snapshot(f"{back}@after")
    judged = backup.backup(storage, f"{back}@after", reachable).path
    fsck = subprocess.run(["e2fsck", "-fn", str(judged)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    dumped = subprocess.run(["debugfs", "-R", "cat /records", str(judged)], capture_output=True, text=True)
    lines = dumped.stdout.splitlines()
    assert lines[:before] == backed_up                   # the backup's records, untouched
    assert [int(line.split()[0]) for line in lines[before:]] == list(range(1, len(lines) - before + 1))
    assert len(lines) - before >= after                  # every record the guest called durable, and valid
    for line in lines[before:]:
        number, target, checksum = line.split()
        assert checksum == hashlib.sha256(f"{number} {target}".encode()).hexdigest()
    done = virtrbd("backups", "rm", str(made), env=lab.env)   # the import no longer needs the file
    assert done.code == 0, done.err
    assert hashlib.sha256(content_of(storage, f"{back}@before")).hexdigest() == wanted
