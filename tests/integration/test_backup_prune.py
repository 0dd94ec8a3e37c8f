"""``backups prune`` killed at random moments, judged against the cluster: every point the policy keeps restores to
exactly its snapshot, and what neither the policy nor a chain needs is gone once a run ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from virtrbd import backup
from virtrbd.backup.catalog import catalog
from virtrbd.backup.formats import manifest as manifests

from ..ledger import LEDGER
from .backup_support import MiB, random_bytes, scattered_writes, sha256_of

POINTS = 9
FULLS = (1, 4, 7)           # the other points are diffs on the point before


def history(storage, images, folder, rng) -> str:
    """An image with snapshots s1..s9, a day apart by their manifests, backed up as three chains."""
    name = images.create(8 * MiB, scattered_writes(8 * MiB, seed=rng.randrange(1000)))
    for n in range(2, POINTS + 1):
        at = rng.randrange(0, 8 * MiB - 8192)
        images.write(name, [(at, random_bytes(8192, rng.randrange(1000)))], snapshot=f"s{n}")
    start = datetime(2026, 11, 1, 12, tzinfo=UTC)
    for n in range(1, POINTS + 1):
        since = None if n in FULLS else f"rbd/{name}@s{n - 1}"
        made = backup.backup(storage, f"rbd/{name}@s{n}", folder, since=since)
        data = json.loads(made.manifest.read_text())           # the point's time, days apart, sealed again
        data["snapshot_time"] = (start + timedelta(days=n)).isoformat(timespec="seconds")
        data["seal"] = manifests.seal_of(data)
        made.manifest.write_text(manifests.dumps(data))
    return name


def prune(folder, *options: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "virtrbd", "backups", "prune", str(folder), *options]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def prune_killed(folder, *options: str, after: float) -> bool:
    """A prune SIGKILLed ``after`` seconds; whether it was still running then."""
    child = subprocess.Popen([sys.executable, "-m", "virtrbd", "backups", "prune", str(folder), *options],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    running = child.poll() is None
    child.send_signal(signal.SIGKILL)
    child.wait()
    return running


def test_a_prune_killed_at_random_moments_keeps_every_kept_point_restorable(storage, images, tmp_path):
    rng = random.Random(19)
    folder = tmp_path / "backups"
    folder.mkdir()
    name = history(storage, images, folder, rng)
    policy = ("--keep-last", "1", "--keep-daily", "2")             # s9, s8, s7: the chain from the full of s7
    planned = prune(folder, *policy, "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    kept = {d["file"] for d in json.loads(planned.stdout)["decisions"] if d["keep"]}
    assert kept == {f"rbd~{name}~s7.raw", f"rbd~{name}~s7~s8.rbddiff", f"rbd~{name}~s8~s9.rbddiff"}
    started = time.monotonic()
    assert prune(folder, *policy, "--dry-run").returncode == 0
    whole = time.monotonic() - started                              # a run's length, start-up included
    cut_short = 0
    for attempt in range(6):                                        # SIGKILLed part way, at random moments
        cut_short += prune_killed(folder, *policy, after=rng.uniform(0.3, 1.1) * whole)
        for entry in catalog(folder):                               # whatever the moment, nothing lies
            assert entry.status in ("ok", "being removed"), (attempt, entry)
    assert cut_short >= 3                                           # most kills landed inside a run
    finished = prune(folder, *policy)
    assert finished.returncode == 0, finished.stderr
    left = sorted(p.name for p in folder.iterdir() if not p.name.endswith(manifests.SUFFIX))
    assert left == sorted(kept), left
    for file in sorted(kept):
        point = manifests.resolve(folder / file).snapshot
        target = images.name()
        backup.restore(storage, folder / file, f"rbd/{target}")
        same = sha256_of(storage, f"rbd/{target}") == sha256_of(storage, f"rbd/{name}@{point}")
        assert LEDGER.restore(f"a point kept by a prune SIGKILLed 6 times (@{point})", same), file
    assert os.listdir(folder) == [p for p in os.listdir(folder) if not p.startswith(".")]   # no leftovers
