"""Backups and restores beside the tools the peers use, on every shape of image, in one run.

For each store (a memstore lab at 1 GiB, a bluestore lab at 4 GiB, which also
holds a 64 GiB thin image) and each shape of ``bench.backup_shapes``, the
commands run in rounds, the order rotating, so the shared machine's noise
falls on all alike; medians are compared.  Every output file is fsynced
before the clock stops (ours syncs itself; the peers' get an fsync inside the
timed region).  CPU seconds are the command's user + system time.

Targets (issue 17), on every shape:
  RAW backup          throughput >= 1.5x `rbd export`
  QCOW2 backup        throughput >= 1.2x `qemu-img convert -O qcow2`; CPU <= 1.5x qemu-img's
  bytes read          <= 1.05x what librbd reports allocated (for an incremental: changed)
  incremental         file <= 1.1x the bytes changed; time <= `rbd export-diff` where >= 1 % changed
  start-up            a command's fixed cost, connect included, <= 0.1 s
  restore             throughput >= 1.2x `rbd import` of the same RAW file, not in the page cache
  peak RSS            <= 96 MiB for backup and restore

Run: .venv/bin/python -m bench.bench_backup [--runs 3] [--stores memstore,bluestore] [--shapes half,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from virtrbd import Storage
from virtrbd.lab import CephSpec, Lab

from . import backup_shapes
from .common import Row, compile_virtrbd, print_table

MiB = 1 << 20
GiB = 1 << 30
STORES = {   # name: (port, image size, thin image size)
    "memstore": (40710, 1 * GiB, None),
    "bluestore": (40700, 4 * GiB, 64 * GiB),
}
RSS_BOUND = 96 * MiB
STARTUP_BOUND = 0.1


class Run:
    """One command: its time, its CPU seconds (user + system) and its peak RSS (VmHWM, sampled)."""

    def __init__(self, argv: list[str], *, sync: Path | None = None, env: dict | None = None):
        self.argv, self.sync, self.env = argv, sync, env
        self.seconds = self.cpu = 0.0
        self.peak = 0
        self.out = ""

    def __call__(self) -> Run:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **(self.env or {})})
        sampler = threading.Thread(target=self._sample, args=(process,), daemon=True)
        sampler.start()
        out, err = process.communicate()
        if self.sync is not None:                 # the clock stops once the file is on disk
            fd = os.open(self.sync, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        self.seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        sampler.join()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(self.argv[:4])}…: exit {process.returncode}: {err.strip()[-500:]}")
        self.out = out
        if out.startswith("{"):
            self.peak = max(self.peak, json.loads(out).get("peak_rss_bytes") or 0)
        return self

    def _sample(self, process: subprocess.Popen) -> None:
        path = f"/proc/{process.pid}/status"
        while process.poll() is None:
            try:
                with open(path) as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.005)


def uncache(path: Path) -> None:
    """Drop ``path`` from the page cache: a backup is restored long after it was written (virtrbd writes it
    past the cache), and a reader that fetched its holes once would otherwise find them cached."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def median(runs: list[Run], what: str = "seconds") -> float:
    return statistics.median(getattr(r, what) for r in runs)


class StoreBench:
    """One lab (one store) and the shapes measured in it."""

    def __init__(self, root: Path, store: str, runs: int):
        self.store, self.runs = store, runs
        self.port, self.size, self.thin_size = STORES[store]
        self.root = root / store
        self.lab = Lab(self.root / "lab")
        self.dest = self.root / "dest"
        self.kept = self.root / "kept"
        self.dest.mkdir(parents=True)
        self.kept.mkdir()

    def up(self) -> None:
        store_bytes = 48 * GiB if self.store == "bluestore" else 12 * GiB
        self.lab.up(CephSpec(port=self.port, store=self.store, store_bytes=store_bytes, mgr=False))
        ceph = self.lab.root / "ceph"
        keyring = ceph / "ceph.client.virt.keyring"
        self.ceph = ["-c", str(ceph / "ceph.conf"), "--id", "virt", "--keyring", str(keyring)]
        self.qemu_auth = f"id=virt:keyring={keyring}:mon_host=127.0.0.1\\:{self.port}"
        self.env = {"VIRTRBD_CONF": str(self.lab.conf_file)}

    def virtrbd(self, *args: str) -> Run:
        return Run([sys.executable, "-m", "virtrbd", *args, "--json"], env=self.env)

    def rbd(self, *args: str, sync: Path | None = None) -> Run:
        return Run(["rbd", *self.ceph, "--no-progress", *args], sync=sync)

    def rounds(self, contenders: dict, before=None, after=None) -> dict[str, list[Run]]:
        """Each round runs every contender (a function giving the ``Run``) once, the order rotating; round 0
        warms caches up and is dropped.  ``after(name, run)`` looks at each run's outcome."""
        results: dict[str, list[Run]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_no in range(self.runs + 1):
            for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                if before:
                    before(name)
                run = contenders[name]()()
                if after:
                    after(name, run)
                if round_no:
                    results[name].append(run)
        return results

    def clean(self, *dirs: Path) -> None:
        for folder in dirs or (self.dest,):
            for entry in folder.iterdir():
                entry.unlink()

    # --- one shape ---------------------------------------------------------------------------------

    def measure(self, shape: backup_shapes.Shape, storage: Storage) -> list[Row]:
        name = f"b-{shape.name}"
        changed = backup_shapes.make(storage.cluster, shape, name)
        try:
            allocated = backup_shapes.allocated(storage.cluster, name, "s2")
            reported_change = backup_shapes.allocated(storage.cluster, name, "s2", since="s1")
            label = f"{self.store} {shape.name} {shape.size / GiB:g}G"
            rows = self.full(name, label, allocated)
            rows += self.incremental(name, label, shape, changed, reported_change)
            rows += self.restore(name, label, storage)
            return rows
        finally:
            self.clean(self.dest, self.kept)
            backup_shapes.remove(storage.cluster, shape, name)

    def full(self, name: str, label: str, allocated: int) -> list[Row]:
        export, converted = self.dest / "export.raw", self.dest / "converted.qcow2"
        snap = f"rbd/{name}@s2"
        results = self.rounds({
            "ours raw": lambda: self.virtrbd("backup", snap, str(self.dest)),
            "rbd export": lambda: self.rbd("export", snap, str(export), sync=export),
            "ours qcow2": lambda: self.virtrbd("backup", snap, str(self.dest), "--format", "qcow2"),
            "qemu-img": lambda: Run(["qemu-img", "convert", "-O", "qcow2", f"rbd:{snap}:{self.qemu_auth}",
                                     str(converted)], sync=converted),
        }, before=lambda _name: self.clean())
        self.clean()
        kept = json.loads(self.virtrbd("backup", snap, str(self.kept))().out)
        self.virtrbd("backup", f"rbd/{name}@s1", str(self.kept))()         # the incrementals' parent
        self.raw_file = Path(kept["path"])
        t = {n: median(r) for n, r in results.items()}
        cpu = {n: median(r, "cpu") for n, r in results.items()}
        read = kept["read_bytes"]
        peak = max(r.peak for n in ("ours raw", "ours qcow2") for r in results[n])
        return [
            Row(f"{label}: RAW backup", t["ours raw"], "rbd export", t["rbd export"],
                target="time <= 0.67x", passed=t["ours raw"] <= t["rbd export"] / 1.5),
            Row(f"{label}: QCOW2 backup", t["ours qcow2"], "qemu-img convert", t["qemu-img"],
                target="time <= 0.83x", passed=t["ours qcow2"] <= t["qemu-img"] / 1.2),
            Row(f"{label}: QCOW2 backup CPU", cpu["ours qcow2"], "qemu-img convert", cpu["qemu-img"],
                target="<= 1.5x", passed=cpu["ours qcow2"] <= 1.5 * cpu["qemu-img"]),
            Row(f"{label}: RAW backup CPU", cpu["ours raw"], "rbd export", cpu["rbd export"]),
            Row(f"{label}: bytes read", read / MiB, "librbd: allocated", allocated / MiB, unit="M",
                target="<= 1.05x", passed=read <= 1.05 * allocated),
            Row(f"{label}: peak RSS, backups", peak / MiB,
                f"bound (rbd export {max(r.peak for r in results['rbd export']) / MiB:.0f} MiB)", RSS_BOUND / MiB,
                unit="M", target="<= 1.0x", passed=peak <= RSS_BOUND),
        ]

    def incremental(self, name: str, label: str, shape: backup_shapes.Shape, changed: int,
                    reported: int) -> list[Row]:
        export_diff = self.dest / "export.diff"
        sizes: dict[str, int] = {}
        reads: list[int] = []

        def record(who: str, run: Run) -> None:
            if who == "ours":
                result = json.loads(run.out)
                sizes["ours"] = result["file_size"]
                reads.append(result["read_bytes"])
            else:
                sizes["rbd"] = export_diff.stat().st_size

        def drop(_name: str) -> None:
            for path in [export_diff, *self.kept.glob("*.rbddiff*")]:
                path.unlink(missing_ok=True)

        results = self.rounds({
            "ours": lambda: self.virtrbd("backup", f"rbd/{name}@s2", str(self.kept), "--since", f"rbd/{name}@s1"),
            "rbd export-diff": lambda: self.rbd("export-diff", "--from-snap", "s1", f"rbd/{name}@s2",
                                                str(export_diff), sync=export_diff),
        }, before=drop, after=record)
        drop("")
        t = {n: median(r) for n, r in results.items()}
        timed = shape.changed_share >= 0.01
        return [
            Row(f"{label}: incremental file", sizes["ours"] / MiB, "bytes changed", changed / MiB, unit="M",
                target="<= 1.1x", passed=sizes["ours"] <= 1.1 * changed),
            Row(f"{label}: incremental", t["ours"], "rbd export-diff", t["rbd export-diff"],
                target="time <= 1.0x" if timed else "(< 1 % changed)",
                passed=t["ours"] <= t["rbd export-diff"] if timed else None),
            Row(f"{label}: incremental bytes read", max(reads) / MiB, "librbd: changed", reported / MiB, unit="M",
                target="<= 1.05x", passed=max(reads) <= 1.05 * reported),
            Row(f"{label}: incremental file", sizes["ours"] / MiB, "rbd export-diff file", sizes["rbd"] / MiB,
                unit="M"),
        ]

    def restore(self, name: str, label: str, storage: Storage) -> list[Row]:
        def drop(_name: str) -> None:
            for image in ("restored", "imported"):
                if storage.image_exists(f"rbd/{image}"):
                    storage.remove_image(f"rbd/{image}")
            uncache(self.raw_file)

        results = self.rounds({
            "ours": lambda: self.virtrbd("restore", str(self.raw_file), "rbd/restored"),
            "rbd import": lambda: self.rbd("import", str(self.raw_file), "rbd/imported"),
        }, before=drop)
        drop("")
        t = {n: median(r) for n, r in results.items()}
        peak = max(r.peak for r in results["ours"])
        return [
            Row(f"{label}: restore", t["ours"], "rbd import", t["rbd import"],
                target="time <= 0.83x", passed=t["ours"] <= t["rbd import"] / 1.2),
            Row(f"{label}: peak RSS, restore", peak / MiB,
                f"bound (rbd import {max(r.peak for r in results['rbd import']) / MiB:.0f} MiB)", RSS_BOUND / MiB,
                unit="M", target="<= 1.0x", passed=peak <= RSS_BOUND),
        ]

    def startup(self, storage: Storage) -> list[Row]:
        """A command's fixed cost: the incremental of a 4 MiB image in which nothing changed."""
        storage.create_image("rbd/tiny", 4 * MiB)
        storage.create_snapshot("rbd/tiny@s1")
        storage.create_snapshot("rbd/tiny@s2")
        try:
            self.virtrbd("backup", "rbd/tiny@s1", str(self.kept))()
            out = self.dest / "tiny.diff"

            def drop(_name: str) -> None:
                for path in [out, *self.kept.glob("*.rbddiff*")]:
                    path.unlink(missing_ok=True)

            results = self.rounds({
                "ours": lambda: self.virtrbd("backup", "rbd/tiny@s2", str(self.kept), "--since", "rbd/tiny@s1"),
                "rbd": lambda: self.rbd("export-diff", "--from-snap", "s1", "rbd/tiny@s2", str(out), sync=out),
            }, before=drop)
            t = {n: median(r) for n, r in results.items()}
            return [Row(f"{self.store}: start-up, nothing changed", t["ours"], f"bound (export-diff {t['rbd']:.3f} s)",
                        STARTUP_BOUND, target="<= 1.0x", passed=t["ours"] <= STARTUP_BOUND)]
        finally:
            self.clean(self.dest, self.kept)
            storage.remove_image("rbd/tiny", with_snapshots=True)


def measure(runs: int = 3, stores: list[str] | None = None, shape_names: list[str] | None = None,
            root: str = "/var/tmp") -> list[Row]:
    compile_virtrbd()
    Path(root).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="virtrbd-bench-backup-", dir=root))
    rows: list[Row] = []
    try:
        for store in stores or list(STORES):
            bench = StoreBench(base, store, runs)
            try:
                bench.up()
                with Storage(bench.lab.conf_file) as storage:
                    rows += bench.startup(storage)
                    for shape in backup_shapes.shapes(bench.size, thin_size=bench.thin_size):
                        if shape_names and shape.name not in shape_names:
                            continue
                        print(f"  measuring {store} {shape.name} ({shape.describe})", file=sys.stderr, flush=True)
                        rows += bench.measure(shape, storage)
            finally:
                bench.lab.down()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def misses(rows: list[Row]) -> list[str]:
    """One line per shape that misses a target."""
    by_shape: dict[str, list[str]] = {}
    for row in rows:
        if row.passed is False:
            shape, _, what = row.what.partition(": ")
            by_shape.setdefault(shape, []).append(f"{what} {row.ratio:.2f}x ({row.target})")
    return [f"{shape}: misses {'; '.join(found)}" for shape, found in by_shape.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: memstore,bluestore")
    parser.add_argument("--shapes", default="", help="comma-separated shape names (default: all)")
    parser.add_argument("--root", default="/var/tmp", help="where the labs and the backup files go")
    args = parser.parse_args()
    rows = measure(args.runs, args.stores.split(","), [s for s in args.shapes.split(",") if s], args.root)
    ok = print_table(f"backups and restores on every shape (medians of {args.runs} alternating rounds)", rows)
    lines = misses(rows)
    print("\n" + ("\n".join(lines) if lines else "every shape meets every target"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
