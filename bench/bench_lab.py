"""How fast the embedded lab is usable, beside what a client pays to merely connect to it.

Targets (foundation issue): the Ceph part usable in <= 3 s median; with libvirt
<= 5 s once libvirtd's capability cache is warm.  The peer row is a bare librados
connect + pool listing against the same running lab: the floor any "is it up?"
check pays.  Run: .venv/bin/python -m bench.bench_lab [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from virtrbd import Storage
from virtrbd.lab import CephSpec, Lab

from .common import Row, print_table


def measure(runs: int) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="virtrbd-bench-lab-"))
    lab = Lab(root / "lab")
    spec = CephSpec(port=40500)
    ceph_up, libvirt_up, down, noop, connect = [], [], [], [], []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            lab.up(spec)
            ceph_up.append(time.perf_counter() - started)
            started = time.perf_counter()
            with Storage(lab.conf_file) as storage:
                storage.list_images()
            connect.append(time.perf_counter() - started)
            started = time.perf_counter()
            lab.up(spec)
            noop.append(time.perf_counter() - started)
            started = time.perf_counter()
            lab.up(spec, with_libvirt=True)
            libvirt_up.append(time.perf_counter() - started)
            started = time.perf_counter()
            lab.down()
            down.append(time.perf_counter() - started)
    finally:
        lab.down()
    m = statistics.median
    peer = m(connect)
    return [
        Row("lab up, Ceph part usable", m(ceph_up), "librados connect + list", peer, target="<= 3 s",
            passed=m(ceph_up) <= 3),
        Row("lab up --with-libvirt (added)", m(libvirt_up), "librados connect + list", peer,
            target="<= 5 s with warm libvirtd cache", passed=m(ceph_up) + m(libvirt_up) <= 5),
        Row("second lab up (no-op)", m(noop), "librados connect + list", peer),
        Row("lab down", m(down), "librados connect + list", peer),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ok = print_table(f"embedded lab, median of {args.runs} runs", measure(args.runs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
