"""Live migration between the lab's two hypervisors, beside moving a guest the plain way, same run, alternating.

  migration   a 256 MiB guest of the lab's kit (TCG where KVM cannot boot Linux) on an ephemeral clone the hook
              made, writing records, live-migrated to the other host, direct and peer-to-peer in turn:
              libvirt's job time and the guest's downtime (the destination's completed-job statistics), and the
              ``migrate`` call as its caller waits for it
  plain move  a guest of the same kit on a persistent clone: ``vm stop`` on its host, then ``vm create`` of
              the same disk on the other, until its agent answers

Targets (issue 25): median job time <= 1 s and downtime <= 100 ms.

    .venv/bin/python -m bench.bench_migration [--runs 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

from virtrbd import Storage
from virtrbd.lab import Lab
from virtrbd.lab.guest import migration
from virtrbd.lab.guest.domain import GuestSpec
from virtrbd.lab.guest.golden import create_golden_filesystem
from virtrbd.spec import ImageSpec

from .common import Row, compile_virtrbd, lab_with_hook, print_table

MEMORY_MIB = 256
OTHER = {"a": "b", "b": "a"}


def measure(runs: int) -> list[Row]:
    compile_virtrbd()
    with lab_with_hook() as lab:
        lab.up(with_libvirt=True, hosts=2)
        return _measure(lab, runs)


def _measure(lab: Lab, runs: int) -> list[Row]:
    tag = uuid.uuid4().hex[:6]
    migrant, mover = f"bench-mig-{tag}-live", f"bench-mig-{tag}-plain"
    with Storage(lab.conf_file) as storage:
        golden = create_golden_filesystem(storage, ImageSpec("rbd", f"bench-mig-{tag}-gold"), 64 << 20)
        guests = lab.guests("a")
        guests.create(GuestSpec(migrant, (ImageSpec("rbd", f"{migrant}-disk"),), clone_of=golden, ephemeral=True,
                                memory_mib=MEMORY_MIB))
        guests.create(GuestSpec(mover, (ImageSpec("rbd", f"{mover}-disk"),), clone_of=golden,
                                memory_mib=MEMORY_MIB))
        accelerator = "TCG" if guests.accelerator(guests.kit.build()) == "qemu" else "KVM"
        guests.run(migrant, ["records", "start", "vda"])
        moves, plain = [], []
        try:
            for round_no in range(runs):
                for contender in ((0, 1) if round_no % 2 else (1, 0)):
                    if contender:
                        here = migration.locate(lab, migrant)
                        moves.append(migration.migrate(lab, migrant, OTHER[here], p2p=bool(round_no % 2)))
                    else:
                        plain.append(_plain_move(lab, mover))
        finally:
            for name in (migrant, mover):
                for host in migration.defined_on(lab, name):
                    lab.guests(host).remove(name)
            storage.remove_image(f"{mover}-disk")
            storage.remove_image(golden.image, with_snapshots=True, flatten_children=True)
    job = statistics.median(m.job_ms or 0 for m in moves) / 1000
    downtime = statistics.median(m.downtime_ms or 0 for m in moves) / 1000
    call = statistics.median(m.seconds for m in moves)
    moved = statistics.median(plain)
    label = f"({accelerator} {MEMORY_MIB} MiB, n={len(moves)})"
    return [Row(f"migration, libvirt's job {label}", job, "vm stop + vm create there", moved,
                target="<= 1 s", passed=job <= 1.0),
            Row(f"migration, downtime {label}", downtime, "vm stop + vm create there", moved,
                target="<= 0.1 s", passed=downtime <= 0.1),
            Row(f"migration, the whole call {label}", call, "vm stop + vm create there", moved)]


def _plain_move(lab: Lab, name: str) -> float:
    """Stop the guest on its host and start the same disk on the other, until its agent answers."""
    here = migration.locate(lab, name)
    started = time.perf_counter()
    source = lab.guests(here)
    source.stop(name)
    source.remove(name)                             # a persistent clone: the disk stays
    lab.guests(OTHER[here]).create(GuestSpec(name, (ImageSpec("rbd", f"{name}-disk"),), memory_mib=MEMORY_MIB))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=6, help="rounds: one migration and one plain move each")
    args = parser.parse_args()
    ok = print_table("live migration between the lab's hosts (medians)", measure(args.runs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
