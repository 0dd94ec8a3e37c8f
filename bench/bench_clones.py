"""Clone rate through virtrbd's API beside a bare librbd loop and libvirt's vol-clone, in one run.

Storage.clone one at a time is compared with a bare librbd loop (the wrapper's
overhead); Storage.clone_many, the API's way to make a fleet, with libvirt's
vol-clone, which a user would call once per volume.

Targets (layering issue): 500 clones from one golden snapshot through the API at
>= 0.9x the rate of a bare librbd clone loop and >= 5x the rate of libvirt's
vol-clone of the same image; clone time with a 100 GiB golden within 20 % of a
1 GiB one.  Rounds alternate between the contenders so that the shared
machine's noise falls on all of them alike; medians of per-round rates are
compared.  Run on the lab: .venv/bin/python -m bench.bench_clones [--clones 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

from virtrbd import Storage
from virtrbd.lab import Lab

from .common import Row, print_table

GiB = 1 << 30


def _remove_all(storage: Storage, names: list[str]) -> None:
    with storage.cluster.ioctx(storage.config.ceph.pool) as ioctx:
        api = storage.cluster.rbd.RBD()
        for name in names:
            api.remove(ioctx, name)
    names.clear()


def measure(clones: int = 500, rounds: int = 5, libvirt_clones: int = 20) -> list[Row]:
    lab = Lab()
    started_lab = lab.up(with_libvirt=True)
    tag = uuid.uuid4().hex[:6]
    try:
        with Storage(lab.conf_file) as storage:
            return _measure(storage, tag, clones, rounds, libvirt_clones)
    finally:
        if started_lab:
            lab.down()


def _measure(storage: Storage, tag: str, clones: int, rounds: int, libvirt_clones: int) -> list[Row]:
    pool = storage.config.ceph.pool
    small, big = f"bench-{tag}-gold1g", f"bench-{tag}-gold100g"
    storage.create_image(small, GiB)
    storage.create_image(big, 100 * GiB)
    with storage.cluster.image(pool, small) as image:
        image.write(b"\xab" * (4 << 20), 0)
    golden_small, golden_big = storage.make_golden(small), storage.make_golden(big)
    per_round = max(1, clones // rounds)
    made: list[str] = []
    rates = {"api": [], "bare": [], "batch": []}
    per_clone = {"1g": [], "100g": []}
    try:
        with storage.cluster.ioctx(pool) as ioctx:
            api = storage.cluster.rbd.RBD()
            for r in range(rounds):
                # bare librbd: the floor any wrapper is measured against
                names = [f"bench-{tag}-b{r}-{i}" for i in range(per_round)]
                started = time.perf_counter()
                for name in names:
                    api.clone(ioctx, small, "golden", ioctx, name)
                rates["bare"].append(per_round / (time.perf_counter() - started))
                made.extend(names)
                _remove_all(storage, made)
                # virtrbd's API: the same clones through Storage.clone
                names = [f"bench-{tag}-a{r}-{i}" for i in range(per_round)]
                started = time.perf_counter()
                for name in names:
                    storage.clone(golden_small, name)
                rates["api"].append(per_round / (time.perf_counter() - started))
                made.extend(names)
                _remove_all(storage, made)
                # virtrbd's batch API: several clones in flight
                names = [f"bench-{tag}-m{r}-{i}" for i in range(per_round)]
                started = time.perf_counter()
                storage.clone_many(golden_small, names)
                rates["batch"].append(per_round / (time.perf_counter() - started))
                made.extend(names)
                _remove_all(storage, made)
            for r in range(rounds):
                for size, golden in (("1g", golden_small), ("100g", golden_big)):
                    name = f"bench-{tag}-{size}-{r}"
                    for i in range(10):
                        started = time.perf_counter()
                        storage.clone(golden, f"{name}-{i}")
                        per_clone[size].append(time.perf_counter() - started)
                        made.append(f"{name}-{i}")
                _remove_all(storage, made)
        libvirt_rate = _libvirt_rate(storage, small, tag, libvirt_clones)
    finally:
        _remove_all(storage, made)
        for image in (small, big):
            storage.remove_image(image, with_snapshots=True, flatten_children=True)

    api_rate, bare_rate = statistics.median(rates["api"]), statistics.median(rates["bare"])
    batch_rate = statistics.median(rates["batch"])
    t1, t100 = statistics.median(per_clone["1g"]), statistics.median(per_clone["100g"])
    return [
        Row(f"clones/s through Storage.clone ({per_round * rounds})", api_rate, "bare librbd clone loop",
            bare_rate, unit="/s", target=">= 0.9x", passed=api_rate >= 0.9 * bare_rate),
        Row("clones/s through Storage.clone_many (8 in flight)", batch_rate, f"libvirt vol-clone ({libvirt_clones})",
            libvirt_rate, unit="/s", target=">= 5x", passed=batch_rate >= 5 * libvirt_rate),
        Row("clones/s through Storage.clone (one at a time)", api_rate, f"libvirt vol-clone ({libvirt_clones})",
            libvirt_rate, unit="/s", target="(for reference)"),
        Row("one clone of a 100 GiB golden (ms)", t100 * 1000, "one clone of a 1 GiB golden", t1 * 1000,
            unit="ms", target="<= 1.2x", passed=t100 <= 1.2 * t1),
    ]


def _libvirt_rate(storage: Storage, source: str, tag: str, count: int) -> float:
    """libvirt's own layered clone: vol-clone (createXMLFrom) into the lab's rbd pool."""
    from virtrbd.libvirt.host import Host
    with Host(storage.config.libvirt.uri) as host:
        pool = host.find_pool(storage.config.libvirt_pool)
        pool.refresh(0)
        volume = pool.storageVolLookupByName(source)
        names = [f"bench-{tag}-lv-{i}" for i in range(count)]
        started = time.perf_counter()
        for name in names:
            xml = (f"<volume><name>{name}</name><capacity unit='bytes'>{GiB}</capacity>"
                   f"<target><format type='raw'/></target></volume>")
            pool.createXMLFrom(xml, volume, 0)
        rate = count / (time.perf_counter() - started)
    made = list(names)
    _remove_all(storage, made)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clones", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = measure(args.clones, args.rounds)
    ok = print_table(f"clones from one golden snapshot, medians of {args.rounds} alternating rounds", rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
