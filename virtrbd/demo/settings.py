"""What the demo builds: how many domains, how many started at once (no heavy imports: the CLI reads it)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class DemoSettings:
    domains: int = 100            # defined, each with a clone-on-boot disk
    batch: int = 10               # real Linux guests started: what a 2-core machine boots comfortably under TCG
    parallel: int = 4             # guest starts in flight
    golden_size: int = GiB        # the golden image: an ext4 filesystem with known files
    guest_memory_mib: int = 128
    keep: bool = False
