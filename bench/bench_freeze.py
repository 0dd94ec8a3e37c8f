"""How long a domain snapshot keeps the guest frozen: freeze asked to thaw done, for one disk and for two.

  virtrbd   ``Storage.snapshot_domain(quiesce="require")``: libvirt's FSFreeze, every disk's snapshot at once
            (no quiesce round trip: the guest is frozen already), FSThaw; its own clock per step
  peer      what operators script and CloudStack does (PR #3724): ``virsh domfsfreeze``, ``rbd snap create``
            for each disk, ``virsh domfsthaw``, timed the same way
  target    median of the runs <= 150 ms on the 2-core test machine (TCG there), for each size

The guest writes checksummed records (write, then fsync) on every disk throughout, as a busy guest does;
freezing syncs what it has in flight.  The two alternate, run by run.

    .venv/bin/python -m bench.bench_freeze [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid

from virtrbd import Storage
from virtrbd.lab import Lab
from virtrbd.lab.guest.domain import GuestSpec, targets
from virtrbd.lab.guest.golden import create_golden_filesystem
from virtrbd.spec import ImageSpec

from .common import Row, compile_virtrbd, lab_with_hook, print_table

TARGET_MS = 150


def peer_once(lab: Lab, uri: str, name: str, disks: list[str], snapshot: str) -> dict[str, float]:
    """The scripted sequence, each step's seconds and the window."""
    cluster = lab.ceph_cluster()
    ceph = ["-c", str(cluster.conf), "--id", "admin", "--keyring", str(cluster.admin_keyring)]

    def run(argv: list[str]) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    asked = time.perf_counter()
    run(["virsh", "-q", "-c", uri, "domfsfreeze", name])
    frozen = time.perf_counter()
    for disk in disks:
        run(["rbd", *ceph, "snap", "create", f"{disk}@{snapshot}"])
    snapped = time.perf_counter()
    run(["virsh", "-q", "-c", uri, "domfsthaw", name])
    thawed = time.perf_counter()
    return {"freeze": frozen - asked, "snapshots": snapped - frozen, "thaw": thawed - snapped, "window": thawed - asked}


def one_size(lab: Lab, storage: Storage, golden: ImageSpec, count: int, runs: int, tag: str) -> list[Row]:
    name = f"bench-freeze-{tag}-{count}"
    disks = [ImageSpec("rbd", f"{name}-{target}") for target in targets(count)]
    for disk in disks:
        storage.clone(golden, disk)
    guests = lab.guests()
    guests.create(GuestSpec(name, tuple(disks)))
    ours, theirs = [], []
    try:
        guests.run(name, ["records", "start", *targets(count)])
        time.sleep(1)
        for run in range(runs + 1):                         # run 0 warms both up and is not counted
            made = storage.snapshot_domain(name, f"ours{run}", quiesce="require")
            peer = peer_once(lab, storage.config.libvirt.uri, name, [str(d) for d in disks], f"peer{run}")
            if run:
                ours.append(made.seconds)
                theirs.append(peer)
        guests.run(name, ["records", "stop"])
    finally:
        guests.remove(name)
        for disk in disks:
            storage.remove_image(disk, with_snapshots=True)

    def median_ms(samples: list[dict[str, float]], step: str) -> float:
        return statistics.median(sample[step] for sample in samples) * 1000

    label = f"{count} disk{'s' if count > 1 else ''}"
    window = median_ms(ours, "window")
    rows = [Row(f"freeze window, {label} ({runs})", window, "virsh + rbd snap create", median_ms(theirs, "window"),
                unit="ms", target=f"<= {TARGET_MS} ms", passed=window <= TARGET_MS)]
    for step in ("freeze", "snapshots", "thaw"):
        rows.append(Row(f"  of which {step}", median_ms(ours, step), f"  {step}", median_ms(theirs, step), unit="ms"))
    return rows


def measure(runs: int = 10) -> list[Row]:
    compile_virtrbd()
    tag = uuid.uuid4().hex[:6]
    with lab_with_hook() as lab, Storage(lab.conf_file) as storage:
        golden = create_golden_filesystem(storage, ImageSpec("rbd", f"bench-freeze-{tag}-fs"), 64 << 20)
        try:
            return [row for count in (1, 2) for row in one_size(lab, storage, golden, count, runs, tag)]
        finally:
            storage.remove_image(golden.image_spec, with_snapshots=True, flatten_children=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="snapshots of each kind per size (median)")
    args = parser.parse_args()
    ok = print_table("freeze window of a domain snapshot (medians, alternating)", measure(args.runs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
