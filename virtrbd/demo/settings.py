"""What the demo builds: how many domains, how many started at once (no heavy imports: the CLI reads it)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class DemoSettings:
    domains: int = 100            # defined, each with a clone-on-boot disk
    batch: int = 20               # started at once: what a 2-core machine runs comfortably (halted guests)
    parallel: int = 4             # domain starts in flight
    golden_size: int = GiB
    golden_data: int = 64 * MiB   # written into the golden image before it is made golden
    keep: bool = False
