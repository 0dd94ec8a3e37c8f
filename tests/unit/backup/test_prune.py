"""``backups prune``: Proxmox Backup Server's retention options, chains kept whole, and a prune killed at any
moment that the next run completes — judged on random histories by restoring every kept point."""

from __future__ import annotations

import os
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from virtrbd.backup import pruning
from virtrbd.backup.catalog import catalog
from virtrbd.backup.make import write_full_backup, write_incremental_backup
from virtrbd.backup.memory import MemorySink, MemorySource
from virtrbd.backup.restore import plan_restore, restore_chain
from virtrbd.backup.results import BackupPlan, SourceFacts
from virtrbd.backup.retention import Policy, decide
from virtrbd.errors import UsageError
from virtrbd.spec import ImageSpec

from ...cli_helpers import assert_one_line_error, virtrbd
from .conftest import MemoryDiffSource, apply_changes

SIZE = 64 << 10
START = datetime(2026, 1, 1, tzinfo=UTC)


def history(folder: Path, rng: random.Random, images=("a", "b"), points: int = 14) -> dict[str, bytes]:
    """Fulls and incrementals of ``images`` over simulated weeks; what each backup's point holds, by file."""
    contents = {}
    for image in images:
        when, content, previous = START, bytes(SIZE), None
        for n in range(points):
            when += timedelta(hours=rng.choice((1, 5, 13, 26, 70, 200)))
            snapshot = f"s{n}"
            facts = SourceFacts(SIZE, f"id-{image}", n + 1, snapshot_time=when.isoformat(timespec="seconds"))
            offset = rng.randrange(0, SIZE - 600, 512)
            new, changes = apply_changes(content, SIZE, [(offset, rng.randbytes(500))], [])
            if previous is None or rng.random() < 0.25:
                result = write_full_backup(MemorySource(new, None), facts,
                                           BackupPlan(ImageSpec("rbd", image, snapshot), folder, "raw"))
            else:
                result = write_incremental_backup(MemoryDiffSource(new, changes), facts,
                                                  BackupPlan(ImageSpec("rbd", image, snapshot), folder, "rbd-diff-v1",
                                                             ImageSpec("rbd", image, previous)))
            contents[result.path.name] = new
            content, previous = new, snapshot
    return contents


def restored(path: Path) -> bytes:
    plan = plan_restore(path)
    sink = MemorySink(plan.links[0].size)
    restore_chain(plan, sink)
    return bytes(sink.data)


def random_policy(rng: random.Random) -> Policy:
    while True:
        values = {name: rng.choice((0, 0, 1, 2, 3)) for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly")}
        if any(values.values()):
            return Policy(**values)


class Killed(BaseException):
    """A SIGKILL between two system calls of the prune."""


def killed_after(calls: int, monkeypatch) -> None:
    """The prune dies before its ``calls``-th rename or unlink."""
    left = [calls]

    def maybe_die(real):
        def call(*args, **kwargs):
            left[0] -= 1
            if left[0] < 0:
                raise Killed
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(pruning.os, "rename", maybe_die(os.rename))
    monkeypatch.setattr(pruning.os, "unlink", maybe_die(os.unlink))


@pytest.mark.parametrize("seed", range(12))
def test_random_histories_and_policies_keep_every_kept_point_restorable(tmp_path, seed, monkeypatch):
    rng = random.Random(seed)
    folder = tmp_path / "backups"
    folder.mkdir()
    contents = history(folder, rng)
    policy = random_policy(rng)
    clean = tmp_path / "clean"
    shutil.copytree(folder, clean)
    expected = pruning.prune(clean, policy, zone=UTC)                # an uninterrupted run, for comparison
    kept = {d.file for d in expected.decisions if d.keep}
    assert sorted(p.name for p in clean.iterdir() if not p.name.endswith(".manifest.json")) == sorted(kept)

    with monkeypatch.context() as patch:                             # the same prune, killed part way
        killed_after(rng.randrange(0, 3 * len(expected.removed) + 1), patch)
        try:
            pruning.prune(folder, policy, zone=UTC)
        except Killed:
            pass
    for entry in catalog(folder):                                    # whatever the moment, nothing lies
        assert entry.status in ("ok", "being removed"), entry
    again = pruning.prune(folder, policy, zone=UTC)
    assert {d.file for d in again.decisions if d.keep} == kept
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in clean.iterdir())
    for file in kept:
        assert restored(folder / file) == contents[file], file
    for decision in expected.decisions:                              # nothing kept without a reason
        assert decision.keep == (decision.reason.startswith(("keep-", "needed by"))), decision
    for image in ("rbd/a", "rbd/b"):                                 # keep-last: the newest N of each image
        mine = sorted((d for d in expected.decisions if d.image == image), key=lambda d: d.time, reverse=True)
        assert all(d.keep for d in mine[:policy.last])


def entry_times(folder: Path, times: list[datetime]) -> None:
    content = bytes(SIZE)
    for n, when in enumerate(times):
        facts = SourceFacts(SIZE, "id-x", n + 1, snapshot_time=when.isoformat(timespec="seconds"))
        write_full_backup(MemorySource(content, None), facts, BackupPlan(ImageSpec("rbd", "x", f"s{n}"), folder, "raw"))


def test_each_option_counts_only_periods_no_earlier_option_kept_a_backup_in(tmp_path):
    days = [START + timedelta(days=d, hours=h) for d in range(5) for h in (8, 12, 20)]   # three a day, five days
    entry_times(tmp_path, days)
    decisions = {d.file: d for d in decide(catalog(tmp_path), Policy(last=2, daily=2), zone=UTC)}
    kept = sorted((d.time, d.reason) for d in decisions.values() if d.keep)
    assert kept == [("2026-01-03T20:00:00+00:00", "keep-daily 2026-01-03"),
                    ("2026-01-04T20:00:00+00:00", "keep-daily 2026-01-04"),
                    ("2026-01-05T12:00:00+00:00", "keep-last"),
                    ("2026-01-05T20:00:00+00:00", "keep-last")]


def test_the_command_says_what_stays_and_why_and_dry_run_changes_nothing(tmp_path):
    entry_times(tmp_path, [START + timedelta(days=d) for d in range(4)])
    before = sorted(os.listdir(tmp_path))
    dry = virtrbd("backups", "prune", str(tmp_path), "--keep-last", "1", "--dry-run")
    assert dry.code == 0 and dry.out.count("would remove") == 3 and "(keep-last)" in dry.out, dry
    assert sorted(os.listdir(tmp_path)) == before
    done = virtrbd("backups", "prune", str(tmp_path), "--keep-last", "1")
    assert done.code == 0 and done.out.count("removed") == 3 and len(os.listdir(tmp_path)) == 2


@pytest.mark.parametrize("args, words", [
    (["--keep-last", "-1"], "not a whole number"),
    (["--keep-daily", "two"], "not a whole number"),
    ([], "at least one --keep-"),
])
def test_bad_policies_are_one_line_and_change_nothing(tmp_path, args, words):
    entry_times(tmp_path, [START])
    before = sorted(os.listdir(tmp_path))
    result = virtrbd("backups", "prune", str(tmp_path), *args)
    assert_one_line_error(result, 2, words)
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(UsageError):
        Policy(last=-1)


def test_a_directory_that_is_not_one_changes_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(virtrbd("backups", "prune", str(tmp_path / "file"), "--keep-last", "1"), 1,
                          "not a directory")


def test_a_broken_backup_or_chain_makes_prune_remove_nothing(tmp_path):
    entry_times(tmp_path, [START + timedelta(days=n) for n in range(4)])
    data = sorted(tmp_path.glob("*.raw"))
    with open(data[1], "r+b") as f:                       # a data file that no longer matches its manifest
        f.truncate(SIZE // 2)
    before = sorted(os.listdir(tmp_path))
    for extra in ([], ["--dry-run"]):
        refused = virtrbd("backups", "prune", str(tmp_path), "--keep-last", "1", *extra)
        assert_one_line_error(refused, 1, "1 backup(s) are broken, so prune removes nothing", data[1].name)
    assert sorted(os.listdir(tmp_path)) == before
    data[1].unlink()
    (tmp_path / (data[1].name + ".manifest.json")).unlink()  # taken away by hand: prune goes on
    assert virtrbd("backups", "prune", str(tmp_path), "--keep-last", "1").code == 0
    assert sorted(p.name for p in tmp_path.glob("*.raw")) == [data[3].name]


def test_two_fulls_claiming_one_point_with_different_content_make_prune_remove_nothing(make_full, tmp_path):
    make_full(b"a" * 5000, fmt="raw")
    make_full(b"b" * 5000, fmt="qcow2")                   # the same image id and snapshot, other bytes
    before = sorted(os.listdir(tmp_path))
    refused = virtrbd("backups", "prune", str(tmp_path), "--keep-last", "1")
    assert_one_line_error(refused, 1, "rbd~img~s1.qcow2 and rbd~img~s1.raw both claim rbd/img@s1 with different "
                                      "content")
    assert sorted(os.listdir(tmp_path)) == before
