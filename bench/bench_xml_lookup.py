"""Looking a volume up by name in an rbd pool of 1000 images, beside libvirt's pool refresh.

libvirt learns of an image it did not create itself only by refreshing the whole pool, and its
rbd backend opens every image to do so (CloudStack #14188: 11.7 s for 950 images, paid on every
VM start).  virtrbd asks librbd for the one image instead (``policy.find_volume``: one
read-only open).  Target (issue 3): <= 20 ms median with 1000 images, measured in the same run
as libvirt's refresh + lookup of the same pool.  The images are made in the lab's pool under a
unique prefix and removed afterwards.  Run: .venv/bin/python -m bench.bench_xml_lookup
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from virtrbd import Storage
from virtrbd import config as config_module
from virtrbd.lab import Lab
from virtrbd.libvirt import policy
from virtrbd.libvirt.host import Host
from virtrbd.spec import ImageSpec

from .common import Row, median_time, print_table

TARGET_MS = 20


def measure(images: int = 1000, runs: int = 3, lookups: int = 50) -> list[Row]:
    lab = Lab()
    started = lab.up(with_libvirt=True)
    try:
        config = config_module.load(lab.conf_file)
        with Storage(config) as storage, Host(config.libvirt.uri) as host:
            return _measure(storage, host, config, images, runs, lookups)
    finally:
        if started:
            lab.down()


def _measure(storage: Storage, host: Host, config, images: int, runs: int, lookups: int) -> list[Row]:
    pool, libvirt_pool = config.ceph.pool, config.libvirt_pool
    names = [f"bench-lookup-{uuid.uuid4().hex[:6]}-{i:04d}" for i in range(images)]
    wanted = [names[(i * 7919) % images] for i in range(lookups)]   # spread over the pool, none twice in a row
    cluster = storage.cluster
    with cluster.ioctx(pool) as ioctx:
        rbd = cluster.rbd.RBD()
        _each(lambda name: rbd.create(ioctx, name, 4 << 20, old_format=False), names)
        try:
            def libvirt_lookup() -> None:
                host.refresh_pool(libvirt_pool)
                host.find_volume(libvirt_pool, wanted[0]).info()

            refresh = median_time(libvirt_lookup, runs)
            ours = _median_each(lambda name: policy.find_volume(cluster, ImageSpec(pool, name)), wanted)
            known = _median_each(lambda name: host.find_volume(libvirt_pool, name), wanted)
        finally:
            _each(lambda name: rbd.remove(ioctx, name), names)
            host.refresh_pool(libvirt_pool)   # and libvirt forgets them again
    ms = 1000
    peer = f"libvirt refresh+lookup ({images})"
    return [
        Row(f"volume lookup by name, {images} images (librbd)", ours * ms, peer, refresh * ms, unit="ms",
            target=f"<= {TARGET_MS} ms median", passed=ours * ms <= TARGET_MS),
        Row("libvirt lookup of a volume it already knows", known * ms, peer, refresh * ms, unit="ms"),
    ]


def _each(action, names: list[str]) -> None:
    """Creating or removing a thousand images one by one takes half a minute; librbd runs them in parallel."""
    with ThreadPoolExecutor(max_workers=8) as workers:
        list(workers.map(action, names))


def _median_each(action, names: list[str]) -> float:
    samples = []
    for name in names:
        started = time.perf_counter()
        if action(name) is None:
            raise AssertionError(f"{name}: not found")
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="pool refreshes to take the median of")
    args = parser.parse_args()
    ok = print_table(f"volume lookup by name, pool of {args.images} images (median)",
                     measure(args.images, args.runs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
