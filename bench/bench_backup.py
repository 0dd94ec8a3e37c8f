"""Backups beside the tools the peers use, on the same snapshots, in the same run.

The lab for this benchmark is a separate bluestore cluster (port 40700, no mgr)
because the data (a few GiB) is beyond what a memory-backed OSD holds well; it
is brought up here and torn down at the end.  Contenders run as commands, each
round in alternating order, so the shared machine's noise falls on all alike;
medians are compared.  Every file is fsynced before the clock stops (ours
syncs itself; the peers' outputs get an fsync inside the timed region).

Targets (backup issue):
  RAW backup        >= 1.5x the throughput of `rbd export`
  QCOW2 backup      >= 1.0x `qemu-img convert -O qcow2` from `rbd:`, and >= 0.8x our RAW backup
  incremental       after 1 % of a 2 GiB image changed: file <= 1.1x the bytes changed (rbd export-diff's
                    size printed beside it), time <= 10 % of the full backup's
  restore           >= 1.0x `rbd import` of the same RAW file
  peak RSS          <= 128 MiB (ours from the command's VmHWM; the peers' sampled from /proc)

Run: .venv/bin/python -m bench.bench_backup [--runs 3] [--size-gib 4] [--root /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from virtrbd import Storage
from virtrbd import backup as backups
from virtrbd.lab import CephSpec, Lab

from .common import Row, compile_virtrbd, print_table

MiB = 1 << 20
GiB = 1 << 30
CHUNK = 4 * MiB
PORT = 40700

#: what the peers published (anchors.md), printed beside our figures
PUBLISHED = [
    ("CloudStack #9408: qemu-img convert -O qcow2 from RBD", "~100 Mbit/s"),
    ("CloudStack #9408: qemu-img convert -O raw from RBD", "~5 Gbit/s"),
    ("CloudStack #9408: rbd export", "~8 Gbit/s"),
    ("CloudStack PR #1645: RAW backup of a mostly empty 40 GB volume", "a 40 GB file"),
    ("anchors, this lab type, 1 GiB half allocated: rbd export / qemu-img qcow2 / Python allocated-only",
     "0.53 s / 0.30 s / 0.22 s"),
    ("anchors: rbd export-diff after 10 MiB of scattered writes", "19.6 MB"),
]


class Run:
    """One command, timed, with its peak RSS sampled from /proc (VmHWM) while it runs."""

    def __init__(self, argv: list[str], *, sync: Path | None = None, env: dict | None = None):
        self.argv = argv
        self.sync = sync
        self.env = env
        self.seconds = 0.0
        self.peak = 0
        self.out = ""

    def __call__(self) -> Run:
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
        sampler.join()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(self.argv[:3])}…: exit {process.returncode}: {err.strip()[-500:]}")
        self.out = out
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


class Bench:
    def __init__(self, root: Path, runs: int, size: int):
        self.root = root
        self.runs = runs
        self.size = size
        self.lab = Lab(root / "lab")
        self.dest = root / "dest"
        self.dest.mkdir(parents=True)
        self.kept = root / "kept"          # the RAW backup the restore rounds read
        self.kept.mkdir()

    # --- the lab and the images ------------------------------------------------------------------

    def up(self) -> None:
        store = max(24 * GiB, 4 * self.size)
        self.lab.up(CephSpec(port=PORT, store="bluestore", store_bytes=store, mgr=False))
        ceph = self.lab.root / "ceph"
        self.ceph = ["-c", str(ceph / "ceph.conf"), "--id", "virt", "--keyring", str(ceph / "ceph.client.virt.keyring")]
        self.qemu_auth = f"id=virt:keyring={ceph / 'ceph.client.virt.keyring'}:mon_host=127.0.0.1\\:{PORT}"
        self.env = {"VIRTRBD_CONF": str(self.lab.conf_file)}

    def virtrbd(self, *args: str, sync: Path | None = None) -> Run:
        return Run([sys.executable, "-m", "virtrbd", *args], env=self.env, sync=sync)

    def rbd(self, *args: str, sync: Path | None = None) -> Run:
        return Run(["rbd", *self.ceph, "--no-progress", *args], sync=sync)

    def make_images(self, storage: Storage) -> None:
        """full: SIZE, every other 4 MiB object written (half allocated, the anchors' profile).
        inc: 2 GiB fully written, snapshot s1; then 1 % of it rewritten in scattered 64 KiB pieces, s2."""
        rng = random.Random(1)
        storage.create_image("full", self.size)
        with storage.cluster.image("rbd", "full") as image:
            for offset in range(0, self.size, 2 * CHUNK):
                image.write(os.urandom(CHUNK), offset)
            image.create_snap("s1")
        inc_size = 2 * GiB
        storage.create_image("inc", inc_size)
        with storage.cluster.image("rbd", "inc") as image:
            for offset in range(0, inc_size, CHUNK):
                image.write(os.urandom(CHUNK), offset)
            image.create_snap("s1")
            piece = 64 << 10
            slots = rng.sample(range(inc_size // piece), inc_size // 100 // piece)
            for slot in sorted(slots):
                image.write(os.urandom(piece), slot * piece)
            image.create_snap("s2")
        self.changed = len(slots) * piece

    # --- helpers ---------------------------------------------------------------------------------

    def clean_dest(self) -> None:
        for entry in self.dest.iterdir():
            entry.unlink()

    def remove_image(self, storage: Storage, name: str) -> None:
        if name in storage.list_images():
            storage.remove_image(name)

    @staticmethod
    def peak(name: str, run: Run) -> int:
        """Ours: the VmHWM the command reports at its end; a peer's: the VmHWM sampled while it ran."""
        return json.loads(run.out)["peak_rss_bytes"] if name.startswith("ours") else run.peak

    def rounds(self, contenders: dict, before=None, after=None) -> dict[str, list[Run]]:
        """Each round runs every contender once, the order rotating from round to round."""
        results: dict[str, list[Run]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_no in range(self.runs + 1):                   # round 0 warms caches up and is dropped
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                if before:
                    before(name)
                run = contenders[name]()
                if after:
                    after(name)
                if round_no:
                    results[name].append(run)
        return results

    # --- measurements ------------------------------------------------------------------------------

    def measure(self) -> tuple[list[Row], list[str]]:
        with Storage(self.lab.conf_file) as storage:
            self.make_images(storage)
            full_rows, raw_file = self.full_backups(storage)
            inc_rows = self.incremental(storage)
            restore_rows = self.restore(storage, raw_file)
        notes = [f"image 'full': {self.size / GiB:.0f} GiB, half allocated (every other 4 MiB object, random data); "
                 f"'inc': 2 GiB fully written, then {self.changed / MiB:.1f} MiB (1 %) rewritten in 64 KiB pieces",
                 f"medians of {self.runs} alternating rounds after one warm-up round; bluestore lab on 127.0.0.1"]
        return full_rows + inc_rows + restore_rows, notes

    def full_backups(self, storage: Storage) -> tuple[list[Row], Path]:
        export = self.dest / "export.raw"
        converted = self.dest / "converted.qcow2"
        contenders = {
            "ours raw": lambda: self.virtrbd("backup", "rbd/full@s1", str(self.dest), "--json")(),
            "ours qcow2": lambda: self.virtrbd("backup", "rbd/full@s1", str(self.dest), "--format", "qcow2",
                                               "--json")(),
            "rbd export": lambda: self.rbd("export", "rbd/full@s1", str(export), sync=export)(),
            "qemu-img": lambda: Run(["qemu-img", "convert", "-O", "qcow2", f"rbd:rbd/full@s1:{self.qemu_auth}",
                                     str(converted)], sync=converted)(),
        }
        results = self.rounds(contenders, before=lambda _n: self.clean_dest())
        t = {name: statistics.median(r.seconds for r in runs) for name, runs in results.items()}
        peak = {name: max(self.peak(name, r) for r in runs) for name, runs in results.items()}
        gbit = lambda seconds: self.size * 8 / seconds / 1e9
        self.full_raw_seconds = t["ours raw"]
        rows = [
            Row(f"RAW backup, {self.size / GiB:.0f} GiB half allocated", t["ours raw"], "rbd export (+fsync)",
                t["rbd export"], target="throughput >= 1.5x: time <= 0.67x",
                passed=t["ours raw"] <= t["rbd export"] / 1.5),
            Row("QCOW2 backup", t["ours qcow2"], "qemu-img convert -O qcow2 rbd:", t["qemu-img"],
                target="throughput >= 1.0x: time <= 1.0x", passed=t["ours qcow2"] <= t["qemu-img"]),
            Row("QCOW2 backup", t["ours qcow2"], "our RAW backup", t["ours raw"],
                target="throughput >= 0.8x: time <= 1.25x", passed=t["ours qcow2"] <= t["ours raw"] / 0.8),
            Row("RAW backup throughput", gbit(t["ours raw"]), "rbd export", gbit(t["rbd export"]), unit="G",
                target="Gbit/s of image (higher is better)"),
            Row("QCOW2 backup throughput", gbit(t["ours qcow2"]), "qemu-img convert", gbit(t["qemu-img"]),
                unit="G", target="Gbit/s of image (higher is better)"),
            Row("peak RSS, RAW backup", peak["ours raw"] / MiB, "rbd export", peak["rbd export"] / MiB, unit="M",
                target="ours <= 128 MiB", passed=peak["ours raw"] <= 128 * MiB),
            Row("peak RSS, QCOW2 backup", peak["ours qcow2"] / MiB, "qemu-img convert", peak["qemu-img"] / MiB,
                unit="M", target="ours <= 128 MiB", passed=peak["ours qcow2"] <= 128 * MiB),
        ]
        self.clean_dest()
        self.virtrbd("backup", "rbd/full@s1", str(self.kept))()            # for the restore rounds
        return rows, self.kept / "rbd~full~s1.raw"

    def incremental(self, storage: Storage) -> list[Row]:
        dest = self.dest
        self.clean_dest()
        backups.backup(storage, "rbd/inc@s1", dest)                      # the parent of the incrementals
        diff = dest / "rbd~inc~s1~s2.rbddiff"
        export_diff = dest / "export.diff"

        def drop_incremental(_name=None):
            for path in (diff, dest / (diff.name + ".manifest.json"), export_diff):
                if path.exists():
                    path.unlink()

        def drop_full(_name=None):
            for path in (dest / "rbd~inc~s2.raw", dest / "rbd~inc~s2.raw.manifest.json"):
                if path.exists():
                    path.unlink()

        # the operations compared as library calls in one process, on one connection: what an agent pays
        full_times, inc_times = [], []
        for round_no in range(self.runs + 1):
            drop_full()
            drop_incremental()
            order = ("full", "inc") if round_no % 2 else ("inc", "full")
            for which in order:
                started = time.perf_counter()
                if which == "full":
                    backups.backup(storage, "rbd/inc@s2", dest)
                else:
                    result = backups.backup(storage, "rbd/inc@s2", dest, since="rbd/inc@s1")
                elapsed = time.perf_counter() - started
                if round_no:
                    (full_times if which == "full" else inc_times).append(elapsed)
        drop_full()
        sizes: dict[str, int] = {}

        def record_size(name: str) -> None:
            path = diff if name == "ours" else export_diff
            sizes[name] = path.stat().st_size

        cli = self.rounds({"ours": lambda: self.virtrbd("backup", "rbd/inc@s2", str(dest), "--since",
                                                        "rbd/inc@s1", "--json")(),
                           "rbd export-diff": lambda: self.rbd("export-diff", "--from-snap", "s1", "rbd/inc@s2",
                                                              str(export_diff), sync=export_diff)()},
                          before=drop_incremental, after=record_size)
        drop_incremental()
        m = statistics.median
        t_cli = {name: m(r.seconds for r in runs) for name, runs in cli.items()}
        ours_size, export_size = sizes["ours"], sizes["rbd export-diff"]
        assert ours_size == result.file_size
        return [
            Row("incremental file, 1 % of 2 GiB changed", ours_size / MiB, "bytes actually changed",
                self.changed / MiB, unit="M", target="<= 1.1x", passed=ours_size <= 1.1 * self.changed),
            Row("incremental file", ours_size / MiB, "rbd export-diff file", export_size / MiB, unit="M",
                target="(figure beside ours)"),
            Row("incremental backup time (library call)", m(inc_times), "full RAW backup of it (library)",
                m(full_times), target="<= 0.10x", passed=m(inc_times) <= 0.10 * m(full_times)),
            Row("incremental backup (command)", t_cli["ours"], "rbd export-diff (+fsync)",
                t_cli["rbd export-diff"], target="(figure beside ours)"),
        ]

    def restore(self, storage: Storage, raw_file: Path) -> list[Row]:
        contenders = {
            "ours": lambda: self.virtrbd("restore", str(raw_file), "rbd/restored", "--json")(),
            "rbd import": lambda: self.rbd("import", str(raw_file), "rbd/imported")(),
        }

        def drop(_name):
            self.remove_image(storage, "restored")
            self.remove_image(storage, "imported")

        results = self.rounds(contenders, before=drop)
        drop(None)
        t = {name: statistics.median(r.seconds for r in runs) for name, runs in results.items()}
        peak_ours = max(self.peak("ours", r) for r in results["ours"])
        peak_import = max(self.peak("rbd import", r) for r in results["rbd import"])
        return [
            Row("restore from the RAW backup", t["ours"], "rbd import of the same file", t["rbd import"],
                target="throughput >= 1.0x: time <= 1.0x", passed=t["ours"] <= t["rbd import"]),
            Row("peak RSS, restore", peak_ours / MiB, "rbd import", peak_import / MiB, unit="M",
                target="ours <= 128 MiB", passed=peak_ours <= 128 * MiB),
        ]


def measure(runs: int = 3, size_gib: int = 4, root: str = "/var/tmp", keep: bool = False) -> list[Row]:
    rows, notes = measure_with_notes(runs, size_gib, root, keep)
    for note in notes:
        print(f"  {note}")
    print_published()
    return rows


def measure_with_notes(runs: int, size_gib: int, root: str, keep: bool = False) -> tuple[list[Row], list[str]]:
    compile_virtrbd()
    base = Path(tempfile.mkdtemp(prefix="virtrbd-bench-backup-", dir=root))
    bench = Bench(base, runs, size_gib * GiB)
    try:
        bench.up()
        return bench.measure()
    finally:
        bench.lab.down()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def print_published() -> None:
    print("\npublished peer figures (their networks and machines), for comparison with the table above")
    for what, figure in PUBLISHED:
        print(f"  {what:<92} {figure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-gib", type=int, default=4, help="size of the half-allocated image (default 4)")
    parser.add_argument("--root", default="/var/tmp", help="where the lab and the backup files go")
    parser.add_argument("--keep", action="store_true", help="keep the files (the lab is always stopped)")
    args = parser.parse_args()
    rows, notes = measure_with_notes(args.runs, args.size_gib, args.root, args.keep)
    ok = print_table(f"backups to secondary storage (medians of {args.runs} alternating rounds)", rows)
    for note in notes:
        print(f"  {note}")
    print_published()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
