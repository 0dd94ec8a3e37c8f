"""Real Linux guests in the lab: how long from ``vm create`` to the agent answering, beside a firmware start.

  guest up          median of 5: ``Guests.create`` (the hook clones the golden filesystem image, the kit boots,
                    the agent answers) against a firmware-only domain started from a clone until QEMU has read
                    its disk, the two alternating; each <= 8 s on the 2-core test machine (TCG there)
  kit build         from nothing (packages downloaded, unpacked, initramfs written) <= 60 s; when current <= 1 s

    .venv/bin/python -m bench.bench_guests [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import libvirt

from virtrbd import Storage
from virtrbd.lab import Lab
from virtrbd.lab.domains import BOOT_SECTOR, domain_xml, wait_for_reads
from virtrbd.lab.guest.domain import GuestSpec
from virtrbd.lab.guest.golden import create_golden_filesystem
from virtrbd.lab.guest.kit import GuestKit
from virtrbd.spec import ImageSpec

from .common import Row, compile_virtrbd, lab_with_hook, print_table


def kit_rows() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="virtrbd-bench-kit-") as folder:
        kit = GuestKit(Path(folder) / "kit")
        built = kit.build()
        current = kit.build()
    return [Row("guest kit build, from nothing", built.seconds, "target", 60.0, target="<= 60 s",
                passed=built.seconds <= 60),
            Row("guest kit build, current", current.seconds, "target", 1.0, target="<= 1 s",
                passed=current.seconds <= 1)]


def firmware_start(conn, storage: Storage, golden: str, name: str, domain_type: str) -> float:
    dom = conn.defineXML(domain_xml(storage.config, name, f"rbd/{name}-disk", domain_type=domain_type,
                                    clone_of=golden, ephemeral=True))
    started = time.perf_counter()
    try:
        dom.create()
        wait_for_reads([dom])
        return time.perf_counter() - started
    finally:
        dom.destroy()
        dom.undefine()


def start_rows(lab: Lab, runs: int) -> list[Row]:
    tag = uuid.uuid4().hex[:6]
    guests = lab.guests()
    with Storage(lab.conf_file) as storage:
        filesystem = create_golden_filesystem(storage, ImageSpec("rbd", f"bench-guest-{tag}-fs"), 64 << 20)
        firmware = f"bench-guest-{tag}-firmware"
        storage.create_image(firmware, 8 << 20)
        with storage.cluster.image("rbd", firmware) as image:
            image.write(BOOT_SECTOR, 0)
        firmware_golden = str(storage.make_golden(firmware))
        guests.create(GuestSpec(f"bench-guest-{tag}-warm", (ImageSpec("rbd", f"bench-guest-{tag}-warm"),),
                                clone_of=filesystem, ephemeral=True))          # the kit built, KVM probed
        guests.remove(f"bench-guest-{tag}-warm")
        domain_type = guests.accelerator(guests.kit.build())
        conn = libvirt.open(storage.config.libvirt.uri)
        ours, theirs = [], []
        try:
            for i in range(runs):
                name = f"bench-guest-{tag}-{i}"
                ours.append(guests.create(GuestSpec(name, (ImageSpec("rbd", f"{name}-disk"),), clone_of=filesystem,
                                                    ephemeral=True)))
                guests.remove(name)
                theirs.append(firmware_start(conn, storage, firmware_golden, f"{name}-fw", domain_type))
        finally:
            conn.close()
            for image in (filesystem.image, firmware):
                storage.remove_image(image, with_snapshots=True, flatten_children=True)
    accel = "TCG" if domain_type == "qemu" else "KVM"
    return [Row(f"vm create to agent answering ({accel}, {runs})", statistics.median(ours),
                "firmware start, disk read", statistics.median(theirs), target="each <= 8 s",
                passed=statistics.median(ours) <= 8 and statistics.median(theirs) <= 8)]


def measure(runs: int = 5) -> list[Row]:
    compile_virtrbd()
    rows = kit_rows()
    with lab_with_hook() as lab:
        return rows + start_rows(lab, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="starts of each kind")
    args = parser.parse_args()
    ok = print_table("real Linux guests (medians)", measure(args.runs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
