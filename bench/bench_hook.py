"""What the qemu hook costs libvirtd: per no-op call, and per domain start that makes a clone.

Targets (hook issue): a no-op call (every event but prepare/release) costs at
most 1.5x a bare ``/usr/bin/python3 -S -c pass``, both started the way libvirtd
starts hooks (its minimal environment, the domain XML on stdin) in the same run;
a domain start whose hook makes one clone takes at most 150 ms longer than the
same start with the image already there.  Starts alternate between the two
kinds; medians are compared.  Run on the lab: .venv/bin/python -m bench.bench_hook
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from virtrbd import Storage, hook_install
from virtrbd.lab import Lab
from virtrbd.lab.domains import BOOT_SECTOR, domain_xml

from .common import Row, compile_virtrbd, lab_with_hook, print_table

HOOK_ENV = {"LC_ALL": "C", "HOME": "/root", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def _call_time(argv: list[str], stdin: bytes, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, input=stdin, env=HOOK_ENV, stdout=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - started)
    return samples


def noop_rows(conf_path: Path, domain_xml: bytes, runs: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "virtrbd-hook"
        script.write_text(hook_install.render(conf_path))
        script.chmod(0o755)
        ours, baseline = [], []
        for _ in range(runs // 10):   # alternate batches so drift falls on both alike
            ours += _call_time([str(script), "vm", "started", "begin", "-"], domain_xml, 10)
            baseline += _call_time(["/usr/bin/python3", "-S", "-c", "pass"], domain_xml, 10)
    m_ours, m_base = statistics.median(ours) * 1000, statistics.median(baseline) * 1000
    return [Row(f"no-op hook call ({runs} calls)", m_ours, "python3 -S -c pass", m_base, unit="ms",
                target="<= 1.5x", passed=m_ours <= 1.5 * m_base)]


def start_rows(lab: Lab, runs: int) -> list[Row]:
    import libvirt

    domain_type = lab.status()["libvirt"]["domain_type"]
    with Storage(lab.conf_file) as storage:
        tag = uuid.uuid4().hex[:6]
        golden_image = f"bench-hook-{tag}-golden"
        storage.create_image(golden_image, 8 << 20)
        with storage.cluster.image("rbd", golden_image) as image:
            image.write(BOOT_SECTOR, 0)
        golden = str(storage.make_golden(golden_image))
        plain_image = f"bench-hook-{tag}-plain"
        storage.clone(golden, plain_image)          # the same kind of image, but already there
        conn = libvirt.open(storage.config.libvirt.uri)
        cloned_times, plain_times = [], []
        try:
            for i in range(runs):
                for kind, times in (("clone", cloned_times), ("plain", plain_times)):
                    name = f"bench-hook-{tag}-{kind}-{i}"
                    image = f"rbd/{name}-disk" if kind == "clone" else f"rbd/{plain_image}"
                    xml = domain_xml(storage.config, name, image, domain_type=domain_type,
                                     clone_of=golden if kind == "clone" else None, ephemeral=True)
                    dom = conn.defineXML(xml)
                    started = time.perf_counter()
                    dom.create()
                    times.append(time.perf_counter() - started)
                    dom.destroy()
                    dom.undefine()
        finally:
            conn.close()
            storage.remove_image(golden_image, with_snapshots=True, flatten_children=True)
            storage.remove_image(plain_image)
    added = (statistics.median(cloned_times) - statistics.median(plain_times)) * 1000
    return [Row(f"domain start, hook makes one clone ({runs})", statistics.median(cloned_times) * 1000,
                "same start, image already there", statistics.median(plain_times) * 1000, unit="ms",
                target=f"added {added:.0f} ms <= 150 ms", passed=added <= 150)]


def measure(runs: int = 10, calls: int = 100) -> list[Row]:
    compile_virtrbd()
    with lab_with_hook() as lab:
        with Storage(lab.conf_file) as storage:   # a domain as libvirt hands it to every hook call
            sample = domain_xml(storage.config, "vm", "rbd/vm-disk", clone_of=None).encode()
        return noop_rows(lab.conf_file, sample, calls) + start_rows(lab, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="domain starts of each kind")
    parser.add_argument("--calls", type=int, default=100, help="no-op hook calls (and as many baseline runs)")
    args = parser.parse_args()
    ok = print_table("qemu hook, medians", measure(args.runs, args.calls))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
