"""Helpers shared by the benchmarks: timing, medians and the ratio table they all print.

The machine is shared and noisy, so every benchmark measures virtrbd and its
named peer in the same run, repeats, and reports medians and their ratio.
"""

from __future__ import annotations

import compileall
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import virtrbd


@dataclass
class Row:
    what: str
    ours: float            # median, in the unit below
    peer_name: str
    peer: float
    unit: str = "s"
    target: str = ""       # e.g. "ours <= 0.5 x peer"
    passed: bool | None = None

    @property
    def ratio(self) -> float:
        return self.ours / self.peer if self.peer else float("inf")


def compile_virtrbd() -> None:
    """Write virtrbd's bytecode before its commands are timed, as installing the package does.

    In an environment with ``PYTHONDONTWRITEBYTECODE`` set, every timed
    command would otherwise compile virtrbd's modules from source again
    (~25 ms per command measured here), a cost no installed copy pays and no
    peer (a C++ binary) has.  Where the bytecode cannot be written, the
    figures carry that cost, and this says so.
    """
    if not compileall.compile_dir(Path(virtrbd.__file__).parent, quiet=1):
        print("  note: virtrbd's bytecode could not be written; its commands are timed compiling it")


@contextmanager
def lab_with_hook() -> Iterator:
    """The default lab with libvirt, and virtrbd's qemu hook installed in it; afterwards whatever was not
    there before (the lab, the hook) goes again.  A lab that ran without libvirt stays (with it): ``up``
    says True for adding libvirt as for building a lab, so whether one ran is asked first."""
    from virtrbd import hook_install
    from virtrbd.lab import Lab
    lab = Lab()
    started_lab = bool(lab.problems())
    lab.up(with_libvirt=True)
    installed_before = hook_install.status().installed
    try:
        hook_install.install(lab.conf_file)
        yield lab
    finally:
        if not installed_before:
            hook_install.uninstall()
        if started_lab:
            lab.down()


def median_time(action: Callable[[], object], runs: int, setup: Callable[[], object] | None = None) -> float:
    samples = []
    for _ in range(runs):
        if setup:
            setup()
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def print_table(title: str, rows: list[Row]) -> bool:
    print(f"\n{title}")
    header = f"{'measure':<44} {'virtrbd':>10} {'peer':<30} {'peer value':>10} {'ratio':>7}  target"
    print(header)
    print("-" * len(header))
    for r in rows:
        verdict = "" if r.passed is None else ("  PASS" if r.passed else "  FAIL")
        print(f"{r.what:<44} {r.ours:>9.3f}{r.unit:<1} {r.peer_name:<30} {r.peer:>9.3f}{r.unit:<1} "
              f"{r.ratio:>6.2f}x  {r.target}{verdict}")
    return all(r.passed is not False for r in rows)
