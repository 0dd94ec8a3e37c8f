"""Instant restore against a plain restore and ``rbd import`` of the same backup, same run, alternating.

Shapes: sparse images of 1, 4 and 16 GiB with 1 % to 50 % of their 4 MiB pieces written at random, backed
up as RAW and as QCOW2.  Per round, in rotating order:

  usable    ``virtrbd restore --instant FILE T --no-copy``, then a read of the image's first and last 4 MiB
            through a connection of the benchmark's own: the time until the image can be read (and the same
            through the library, ``Storage.restore_instantly``, connected already); then ``--resume``
  instant   ``virtrbd restore --instant FILE T`` in the foreground: usable at once, then copied and
            committed; its time against the plain restore's is the copy's throughput
  plain     ``virtrbd restore FILE T`` of the same file (RAW and QCOW2)
  peer      ``rbd import FILE T`` of the RAW file

Then a guest (the lab's kit) boots on an instantly restored disk: the time from the restore command until
its agent answers, against a plain restore followed by the same boot.

On the default lab (memstore) the OSD keeps every object in memory, so a plain restore's time barely
grows with the data.  ``--store bluestore`` runs the same shapes on a bluestore lab of its own (a file
on the root's disk, no libvirt: no guest rows), where writing the data costs what it costs a cluster.

Targets (issue 20): time-to-usable for 16 GiB <= 1.2x that for 1 GiB and <= 5 % of the plain restore's
time; the copy's throughput >= 0.8x the plain restore's (time <= 1.25x); peak RSS <= 128 MiB.

    .venv/bin/python -m bench.bench_instant [--runs 3] [--root /var/tmp] [--no-guest] [--store bluestore]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virtrbd import Storage, backup
from virtrbd.lab.guest.domain import GuestSpec
from virtrbd.lab.guest.golden import create_golden_filesystem
from virtrbd.spec import ImageSpec

from .bench_backup import Run
from .common import Row, compile_virtrbd, lab_with_hook, print_table

MiB = 1 << 20
GiB = 1 << 30
PIECE = 4 * MiB
SHAPES = [(1, 0.50), (1, 0.01), (4, 0.10), (16, 0.01), (16, 0.10)]
RSS_BOUND = 128 * MiB


class Shape:
    def __init__(self, storage: Storage, folder: Path, size_gib: int, share: float, env: dict):
        self.storage, self.env = storage, env
        self.size, self.share = size_gib * GiB, share
        self.label = f"{size_gib} GiB, {share:.0%}"
        self.name = f"bench-instant-{uuid.uuid4().hex[:6]}"
        self.folder = folder / self.name
        self.folder.mkdir(mode=0o711)
        self.files: dict[str, Path] = {}

    def make(self) -> None:
        """The source image, its RAW and QCOW2 backups; the image goes again (memory is the lab's limit)."""
        rng = random.Random(self.size + int(self.share * 100))
        spec = ImageSpec("rbd", self.name)
        self.storage.create_image(spec, self.size)
        pieces = sorted(rng.sample(range(self.size // PIECE), max(1, int(self.size // PIECE * self.share))))
        with self.storage.cluster.image("rbd", self.name) as image:
            for n in pieces:
                image.write(os.urandom(PIECE), n * PIECE)
            image.create_snap("s1")
        for fmt in ("raw", "qcow2"):
            self.files[fmt] = backup.backup(self.storage, f"rbd/{self.name}@s1", self.folder, format=fmt).path
        self.storage.remove_image(spec, with_snapshots=True)

    def target(self) -> str:
        return f"{self.name}-t"

    def clear(self) -> None:
        if self.storage.image_exists(self.target()):
            self.storage.remove_image(self.target())

    def usable(self, fmt: str) -> dict:
        """``--instant --no-copy``, then a read of the first and last 4 MiB: the time until the image can be
        read; then the copy (``--resume``, not timed here).  Also the same through the library, connected."""
        target = self.target()
        started = time.perf_counter()
        starter = Run([sys.executable, "-m", "virtrbd", "restore", "--instant", str(self.files[fmt]),
                       f"rbd/{target}", "--no-copy", "--json"], env=self.env)()
        self._read(target)
        usable = time.perf_counter() - started
        resumed = Run([sys.executable, "-m", "virtrbd", "restore", "--resume", f"rbd/{target}", "--json"],
                      env=self.env)()
        self.clear()
        started = time.perf_counter()
        self.storage.restore_instantly(self.files[fmt], f"rbd/{target}")
        self._read(target)
        library = time.perf_counter() - started
        self.storage.abort_instant_restore(f"rbd/{target}")
        return {"usable": usable, "library": library, "peak": max(starter.peak, resumed.peak)}

    def instant(self, fmt: str) -> dict:
        """``restore --instant`` in the foreground: usable at once, then copied and committed, one process."""
        run = Run([sys.executable, "-m", "virtrbd", "restore", "--instant", str(self.files[fmt]),
                   f"rbd/{self.target()}", "--json"], env=self.env)()
        return {"copy": run.seconds, "peak": run.peak}

    def _read(self, target: str) -> None:
        with self.storage.cluster.image("rbd", target, read_only=True) as image:
            image.read(0, PIECE)
            image.read(self.size - PIECE, PIECE)

    def plain(self, fmt: str) -> dict:
        run = Run([sys.executable, "-m", "virtrbd", "restore", str(self.files[fmt]), f"rbd/{self.target()}",
                   "--json"], env=self.env)()
        return {"copy": run.seconds, "peak": run.peak}

    def rbd_import(self, ceph: list[str]) -> dict:
        run = Run(["rbd", *ceph, "--no-progress", "import", str(self.files["raw"]), f"rbd/{self.target()}"])()
        return {"copy": run.seconds}


def measure_shape(shape: Shape, runs: int, ceph: list[str]) -> dict[str, list[dict]]:
    contenders = {"usable raw": lambda: shape.usable("raw"), "usable qcow2": lambda: shape.usable("qcow2"),
                  "instant raw": lambda: shape.instant("raw"), "instant qcow2": lambda: shape.instant("qcow2"),
                  "plain raw": lambda: shape.plain("raw"), "plain qcow2": lambda: shape.plain("qcow2"),
                  "rbd import": lambda: shape.rbd_import(ceph)}
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_no in range(runs + 1):                        # round 0 warms caches and is dropped
        for name in names[round_no % len(names):] + names[:round_no % len(names)]:
            shape.clear()
            outcome = contenders[name]()
            if round_no:
                results[name].append(outcome)
    shape.clear()
    return results


def med(samples: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def shape_rows(shape: Shape, results: dict[str, list[dict]]) -> list[Row]:
    label = shape.label
    plain = med(results["plain raw"], "copy")
    big = shape.size >= 16 * GiB
    rows = []
    for fmt in ("raw", "qcow2"):
        usable = med(results[f"usable {fmt}"], "usable")
        rows.append(Row(f"usable after, {label} ({fmt.upper()})", usable, "plain virtrbd restore (RAW)", plain,
                        target="<= 0.05 x" if big else "", passed=usable <= 0.05 * plain if big else None))
    rows.append(Row("  the same through the library (connected)", med(results["usable qcow2"], "library"),
                    "plain virtrbd restore (RAW)", plain))
    for fmt in ("raw", "qcow2"):
        ours, theirs = med(results[f"instant {fmt}"], "copy"), med(results[f"plain {fmt}"], "copy")
        rows.append(Row(f"  restore --instant, {fmt.upper()}, to the commit", ours, f"plain restore, {fmt.upper()}",
                        theirs, target="<= 1.25 x", passed=ours <= 1.25 * theirs))
    rows.append(Row("  plain restore, RAW", plain, "rbd import", med(results["rbd import"], "copy")))
    return rows


def guest_rows(lab, storage: Storage, folder: Path, env: dict, runs: int) -> list[Row]:
    """A guest's disk restored instantly and booted, against a plain restore and the same boot."""
    tag = uuid.uuid4().hex[:6]
    golden = create_golden_filesystem(storage, ImageSpec("rbd", f"bench-instant-{tag}-fs"), 64 * MiB)
    disk = ImageSpec("rbd", f"bench-instant-{tag}-disk")
    storage.clone(golden, disk)
    storage.create_snapshot(f"{disk}@s1")
    made = backup.backup(storage, f"{disk}@s1", folder, format="qcow2").path
    guests = lab.guests()
    samples: dict[str, list[float]] = {"instant": [], "plain": []}
    try:
        for round_no in range(runs + 1):
            for kind in (("instant", "plain") if round_no % 2 else ("plain", "instant")):
                name = f"bench-instant-{tag}-{kind}"
                target = ImageSpec("rbd", f"{name}-disk")
                started = time.perf_counter()
                extra = ["--instant", "--background"] if kind == "instant" else []
                subprocess.run([sys.executable, "-m", "virtrbd", "restore", str(made), str(target), *extra],
                               env={**os.environ, **env}, check=True, capture_output=True)
                guests.create(GuestSpec(name, (target,)))
                if round_no:
                    samples[kind].append(time.perf_counter() - started)
                guests.remove(name)
                deadline = time.monotonic() + 120
                while storage.instant_restore_status(target).state != "none" and time.monotonic() < deadline:
                    time.sleep(0.1)
                storage.remove_image(target)
    finally:
        storage.remove_image(disk, with_snapshots=True)
        storage.remove_image(golden.image_spec, with_snapshots=True, flatten_children=True)
    ours, theirs = statistics.median(samples["instant"]), statistics.median(samples["plain"])
    return [Row("guest agent answers, restored instantly", ours, "plain restore, then boot", theirs)]


@contextmanager
def bluestore_lab(folder: Path) -> Iterator:
    """A bluestore lab of its own in ``folder`` (Ceph only), gone afterwards."""
    from virtrbd.lab import Lab
    from virtrbd.lab.ceph_cluster import CephSpec
    lab = Lab(folder / "lab")
    lab.up(CephSpec(port=40700, store="bluestore", store_bytes=48 * GiB, mgr=False))
    try:
        yield lab
    finally:
        lab.down()


def measure(runs: int, root: Path, guest: bool, store: str = "memstore") -> list[Row]:
    compile_virtrbd()
    folder = Path(tempfile.mkdtemp(prefix="bench-instant-", dir=root))
    folder.chmod(0o711)                                     # QEMU's user passes, as to a backup directory
    rows: list[Row] = []
    try:
        with (lab_with_hook() if store == "memstore" else bluestore_lab(folder)) as lab, \
                Storage(lab.conf_file) as storage:
            env = {"VIRTRBD_CONF": str(lab.conf_file)}
            ceph_dir = lab.root / "ceph"
            ceph = ["-c", str(ceph_dir / "ceph.conf"), "--id", "virt", "--keyring",
                    str(ceph_dir / "ceph.client.virt.keyring")]
            usable: dict[int, float] = {}
            peaks: list[int] = []
            for size_gib, share in SHAPES:
                shape = Shape(storage, folder, size_gib, share, env)
                shape.make()
                results = measure_shape(shape, runs, ceph)
                rows += shape_rows(shape, results)
                usable.setdefault(size_gib, med(results["usable qcow2"], "usable"))
                peaks += [s["peak"] for name, runs in results.items() if name.startswith(("usable", "instant"))
                          for s in runs]
                shutil.rmtree(shape.folder)
            rows.append(Row("usable after: 16 GiB against 1 GiB", usable[16], "usable after, 1 GiB", usable[1],
                            target="<= 1.2 x", passed=usable[16] <= 1.2 * usable[1]))
            peak = max(peaks) / MiB
            rows.append(Row("peak RSS of the instant restore's processes", peak, "bound", RSS_BOUND / MiB,
                            unit="M", target="<= 1.0 x", passed=peak <= RSS_BOUND / MiB))
            if guest and store == "memstore":
                rows += guest_rows(lab, storage, folder, env, runs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-guest", action="store_true", help="skip the guest boot rows")
    parser.add_argument("--store", choices=["memstore", "bluestore"], default="memstore",
                        help="the default lab (memstore), or a bluestore lab of its own without guests")
    args = parser.parse_args()
    ok = print_table(f"instant restore ({args.store}; medians, alternating; seconds)",
                     measure(args.runs, args.root, not args.no_guest, args.store))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
