"""Run every benchmark and print its table: ``.venv/bin/python -m bench``."""

from __future__ import annotations

import sys
from pathlib import Path

from . import (
    bench_backup,
    bench_checksums,
    bench_clones,
    bench_encrypted,
    bench_freeze,
    bench_guests,
    bench_hook,
    bench_instant,
    bench_lab,
    bench_merge,
    bench_migration,
    bench_xml_lookup,
)
from .common import print_table

SUITES = [
    ("embedded lab (median of 3 runs)", lambda: bench_lab.measure(3)),
    ("clones from one golden snapshot (500, medians of 5 alternating rounds)", lambda: bench_clones.measure(500, 5)),
    ("backups and restores on every shape (medians of 3 alternating rounds)", lambda: bench_backup.measure(3)),
    ("checksums in one thread (medians of 5 alternating rounds)", lambda: bench_checksums.measure(5)),
    ("synthetic fulls, 4 GiB + 10 diffs (medians of 3 alternating rounds)",
     lambda: bench_merge.measure(4 << 30, 3, Path("/var/tmp"))),
    ("volume lookup by name, pool of 1000 images (medians)", lambda: bench_xml_lookup.measure(1000)),
    ("qemu hook (medians)", lambda: bench_hook.measure(10, 100)),
    ("real Linux guests (medians of 5 alternating starts)", lambda: bench_guests.measure(5)),
    ("freeze window of a domain snapshot (medians of 10, alternating)", lambda: bench_freeze.measure(10)),
    ("instant restore (medians of 3 alternating rounds)", lambda: bench_instant.measure(3, Path("/var/tmp"), True)),
    ("live migration between the lab's hosts (medians of 6 alternating rounds)", lambda: bench_migration.measure(6)),
    ("encrypted backups against the same in the clear (medians of 3 alternating rounds)",
     lambda: bench_encrypted.measure(3)),
]


def main() -> int:
    ok = True
    for title, measure in SUITES:
        ok &= print_table(title, measure())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
