"""A synthetic full (``backups merge``) beside ``cp --sparse=always`` of the full backup file, same run.

No cluster is needed: the chain is written from generated images (deterministic
pseudo-random pieces, holes between) straight through virtrbd's writers — a
full of SIZE with half of its 4 MiB pieces written, then 10 incrementals each
rewriting 1 % of the image in scattered 64 KiB pieces.  Then, alternating,
``virtrbd backups merge`` of the newest diff and ``cp --sparse=always`` of the
full backup (the floor for writing a file of that size: one read, one write,
no chain applied, no checksum), each synced before the clock stops.

Target (issue 19): merge <= 1.5x cp's time; peak RSS <= 128 MiB.

Then prune: 1,000 backups (10 images x 100 points a day apart, every fourth a full, the others diffs on
the point before; 64 KiB images), ``virtrbd backups prune DIR --keep-daily 7 --keep-weekly 4 --dry-run``
beside ``cat`` of every manifest (the floor: reading what prune must read), alternating, medians of 5.
Target: <= 1 s.

Run: .venv/bin/python -m bench.bench_merge [--size-gib 4] [--runs 3] [--root /var/tmp]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from virtrbd.backup.make import write_full_backup, write_incremental_backup
from virtrbd.backup.results import BackupPlan, SourceFacts
from virtrbd.spec import ImageSpec

from .bench_backup import Run
from .common import Row, compile_virtrbd, print_table

MiB = 1 << 20
GiB = 1 << 30
PIECE = 4 * MiB
BLOCK = 64 << 10


class Generated:
    """An image computed, never stored: each written 64 KiB block's content comes from its seed."""

    def __init__(self, size: int, blocks: dict[int, int]):
        self.size = size
        self.blocks = blocks                 # block offset -> seed

    def extents(self, offset: int, length: int):
        found: list[tuple[int, int]] = []
        first = offset - offset % BLOCK
        for o in range(first, offset + length, BLOCK):
            if o in self.blocks:
                start, stop = max(o, offset), min(o + BLOCK, offset + length)
                if found and found[-1][0] + found[-1][1] == start:
                    found[-1] = (found[-1][0], found[-1][1] + stop - start)
                else:
                    found.append((start, stop - start))
        return found

    def submit_read(self, offset: int, length: int, done) -> None:
        data = bytearray(length)
        first = offset - offset % BLOCK
        for o in range(first, offset + length, BLOCK):
            seed = self.blocks.get(o)
            if seed is not None:
                block = random.Random(seed).randbytes(BLOCK)
                start, stop = max(o, offset), min(o + BLOCK, offset + length)
                data[start - offset:stop - offset] = block[start - o:stop - o]
        done(bytes(data), None)


class GeneratedDiff(Generated):
    def __init__(self, size: int, blocks: dict[int, int], changed: list[int]):
        super().__init__(size, blocks)
        self.changed = changed

    def changes(self, offset: int, length: int, older: str):
        end = offset + length
        return [(o, BLOCK, True) for o in self.changed if offset <= o < end]


def make_chain(folder: Path, size: int) -> tuple[Path, Path]:
    """The full backup and the newest of 10 incrementals on top of it."""
    rng = random.Random(7)
    blocks = {o: rng.randrange(1 << 30) for start in range(0, size, 2 * PIECE)
              for o in range(start, min(start + PIECE, size), BLOCK)}
    full = write_full_backup(Generated(size, dict(blocks)), SourceFacts(size, "bench-id", 1),
                             BackupPlan(ImageSpec("rbd", "bench", "s0"), folder, "raw")).path
    newest = full
    for n in range(1, 11):
        changed = sorted({rng.randrange(0, size // BLOCK) * BLOCK for _ in range(size // 100 // BLOCK)})
        blocks.update({o: rng.randrange(1 << 30) for o in changed})
        newest = write_incremental_backup(
            GeneratedDiff(size, dict(blocks), changed), SourceFacts(size, "bench-id", n + 1),
            BackupPlan(ImageSpec("rbd", "bench", f"s{n}"), folder, "rbd-diff-v1",
                       ImageSpec("rbd", "bench", f"s{n - 1}"))).path
    return full, newest


def make_many(folder: Path, images: int = 10, points: int = 100) -> None:
    """``images`` x ``points`` small backups a day apart: a full every fourth point, diffs between."""
    size, start = 64 << 10, datetime(2026, 1, 1, 12, tzinfo=UTC)
    for image in range(images):
        blocks: dict[int, int] = {}
        for point in range(points):
            facts = SourceFacts(size, f"id-{image}", point + 1,
                                snapshot_time=(start + timedelta(days=point)).isoformat(timespec="seconds"))
            spec = ImageSpec("rbd", f"vm{image}", f"s{point}")
            blocks[(point % 16) * 4096] = point
            if point % 4 == 0:
                write_full_backup(Generated(size, dict(blocks)), facts, BackupPlan(spec, folder, "raw"))
            else:
                write_incremental_backup(GeneratedDiff(size, dict(blocks), [(point % 16) * 4096]), facts,
                                         BackupPlan(spec, folder, "rbd-diff-v1", spec.at(f"s{point - 1}")))


def prune_rows(runs: int, root: Path) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="virtrbd-bench-prune-", dir=root))
    try:
        make_many(work)
        manifests = sorted(str(p) for p in work.glob("*.manifest.json"))
        ours, cats = [], []
        for _ in range(runs):
            ours.append(Run([sys.executable, "-m", "virtrbd", "backups", "prune", str(work), "--keep-daily", "7",
                             "--keep-weekly", "4", "--dry-run"])().seconds)
            cats.append(Run(["sh", "-c", 'cat "$@" > /dev/null', "cat", *manifests])().seconds)
        return [Row(f"prune --dry-run of {len(manifests)} backups", statistics.median(ours),
                    "cat of every manifest", statistics.median(cats), target="<= 1 s",
                    passed=statistics.median(ours) <= 1)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(size: int, runs: int, root: Path) -> list[Row]:
    compile_virtrbd()
    work = Path(tempfile.mkdtemp(prefix="virtrbd-bench-merge-", dir=root))
    try:
        full, newest = make_chain(work, size)
        merged = work / full.name.replace("s0", "s10")
        ours, cps, peaks = [], [], []
        for _ in range(runs):
            for path in (merged, merged.with_name(merged.name + ".manifest.json")):
                path.unlink(missing_ok=True)
            run = Run([sys.executable, "-m", "virtrbd", "backups", "merge", str(newest)], sync=merged)()
            ours.append(run.seconds)
            peaks.append(run.peak)
            copy = work / "copy.raw"
            copy.unlink(missing_ok=True)
            cps.append(Run(["cp", "--sparse=always", str(full), str(copy)], sync=copy)().seconds)
        ratio = statistics.median(ours) / statistics.median(cps)
        return [Row(f"synthetic full of {size / GiB:g} GiB + 10 diffs", statistics.median(ours),
                    "cp --sparse=always of the full", statistics.median(cps), target="ours <= 1.5 x peer",
                    passed=ratio <= 1.5),
                Row("its peak RSS", max(peaks) / MiB, "bound", 128, unit="MiB", target="<= 128 MiB",
                    passed=max(peaks) <= 128 * MiB), *prune_rows(max(runs, 5), root)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    ok = print_table("synthetic fulls (medians of alternating rounds)",
                     measure(int(args.size_gib * GiB), args.runs, args.root))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
