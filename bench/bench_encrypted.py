"""Encrypted backups (age) beside unencrypted ones of the same snapshot, same run, alternating.

Shapes: 1 GiB images on the default lab (memstore), or 4 GiB on a bluestore lab of its own (``--store
bluestore``), half of their 4 MiB pieces written at random, and a fifth of their 1 MiB pieces.  Per round,
in turn: a QCOW2 backup in the clear and one encrypted to a recipient, then a restore of each (the
encrypted one with the identity); files fsynced inside the clock.

Targets (issue 26): encrypted backup >= 0.85x the unencrypted speed (time <= 1.18x), restore >= 0.85x,
peak RSS <= 1.1x, encrypted file <= 1.02x the unencrypted one.

    .venv/bin/python -m bench.bench_encrypted [--runs 3] [--store memstore|bluestore]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from virtrbd import Storage
from virtrbd.lab import CephSpec, Lab

from .bench_backup import Run
from .common import Row, compile_virtrbd, print_table

MiB = 1 << 20
GiB = 1 << 30
SHAPES = {"half of 4 MiB pieces": (4 * MiB, 0.5), "a fifth of 1 MiB pieces": (MiB, 0.2)}


def _image(storage: Storage, piece: int, share: float, size: int) -> str:
    name = f"bench-enc-{uuid.uuid4().hex[:6]}"
    storage.create_image(name, size)
    rng = random.Random(piece)
    with storage.cluster.image("rbd", name) as image:
        for n in sorted(rng.sample(range(size // piece), int(size // piece * share))):
            image.write(rng.randbytes(piece), n * piece)
        image.create_snap("s1")
    return name


def _shape(lab: Lab, storage: Storage, folder: Path, label: str, runs: int, size: int) -> list[Row]:
    piece, share = SHAPES[label]
    name = _image(storage, piece, share, size)
    label = f"{label}, {size // GiB} GiB"
    virtrbd = [sys.executable, "-m", "virtrbd", "--config", str(lab.conf_file)]
    identity = folder / f"operator-{name}.key"
    recipient = json.loads(Run([*virtrbd, "backup-key", "new", "--out", str(identity), "--json"])().out)["recipient"]
    times: dict[str, list[Run]] = {"clear backup": [], "sealed backup": [], "clear restore": [], "sealed restore": []}
    sizes = {}
    try:
        for round_no in range(runs + 1):                 # round 0 warms the caches and is dropped
            order = ("clear", "sealed") if round_no % 2 else ("sealed", "clear")
            for kind in order:
                dest = folder / kind
                dest.mkdir(exist_ok=True)
                for old in dest.iterdir():
                    old.unlink()
                extra = ["--recipient", recipient] if kind == "sealed" else ["--format", "qcow2"]
                made = Run([*virtrbd, "backup", f"rbd/{name}@s1", str(dest), *extra, "--json"],
                           sync=dest / f"rbd~{name}~s1.qcow2")()
                sizes[kind] = json.loads(made.out)["file_size"]
                restore_extra = ["--identity", str(identity)] if kind == "sealed" else []
                back = Run([*virtrbd, "restore", str(dest / f"rbd~{name}~s1.qcow2"), f"rbd/{name}-{kind}",
                            *restore_extra, "--json"])()
                storage.remove_image(f"{name}-{kind}")
                if round_no:
                    times[f"{kind} backup"].append(made)
                    times[f"{kind} restore"].append(back)
    finally:
        storage.remove_image(name, with_snapshots=True)
    rows = []
    for what in ("backup", "restore"):
        sealed = statistics.median(r.seconds for r in times[f"sealed {what}"])
        clear = statistics.median(r.seconds for r in times[f"clear {what}"])
        rows.append(Row(f"{what}, {label}", sealed, f"the same {what} in the clear", clear,
                        target="<= 1.18x", passed=sealed <= 1.18 * clear))
        sealed_rss = max(r.peak for r in times[f"sealed {what}"]) / MiB
        clear_rss = max(r.peak for r in times[f"clear {what}"]) / MiB
        rows.append(Row(f"peak RSS, {what}, {label}", sealed_rss, "in the clear", clear_rss, unit="M",
                        target="<= 1.1x", passed=sealed_rss <= 1.1 * clear_rss))
    rows.append(Row(f"file size, {label}", sizes["sealed"] / MiB, "in the clear", sizes["clear"] / MiB, unit="M",
                    target="<= 1.02x", passed=sizes["sealed"] <= 1.02 * sizes["clear"]))
    return rows


def measure(runs: int = 3, store: str = "memstore") -> list[Row]:
    compile_virtrbd()
    with tempfile.TemporaryDirectory(prefix="bench-enc-", dir="/var/tmp") as folder:
        if store == "memstore":
            lab, size = Lab(), GiB
            started = lab.up()
        else:
            lab, size = Lab(Path(folder) / "lab"), 4 * GiB
            started = lab.up(CephSpec(port=40700, store="bluestore", store_bytes=48 * GiB, mgr=False))
        try:
            with Storage(lab.conf_file) as storage:
                return [row for label in SHAPES for row in _shape(lab, storage, Path(folder), label, runs, size)]
        finally:
            if started:
                lab.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", choices=["memstore", "bluestore"], default="memstore")
    args = parser.parse_args()
    ok = print_table(f"encrypted backups against the same in the clear ({args.store}, medians)",
                     measure(args.runs, args.store))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
