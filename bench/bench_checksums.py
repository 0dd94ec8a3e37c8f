"""The checksums a backup computes, and what one costs the other in the same thread.

A backup and a restore compute a CRC-32C of the file's bytes (ISA-L) and an
XXH3-128 of the content (Debian's libxxhash) in the same threads.  ISA-L's
dispatcher picks, on a CPU with AVX-512, a version that leaves the thread's
upper register state dirty, and XXH3's SSE code then runs several times slower
in that thread (``virtrbd.crc32c``'s docstring).  This measures XXH3 in a fresh
thread after one CRC-32C through ``virtrbd.crc32c``, against a thread that
computed none, and after one through ISA-L's dispatcher, for information; and
the two CRCs' own speed.  Two shapes of input: whole 4 MiB chunks of random
bytes, and chunks of 1 MiB reads with zeros between them, hashed as a backup
hashes a sparse chunk (``checksum.digest_of_parts``).

Target: XXH3 after virtrbd's CRC-32C takes at most 1.1x the time it takes in a
thread that computed none.  Run: .venv/bin/python -m bench.bench_checksums
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

from virtrbd import crc32c
from virtrbd.backup.formats.checksum import XXH3_CHUNKS, digest_of_parts
from virtrbd.backup.stream import CHUNK, MiB

from .common import Row, print_table

_dispatcher = ctypes.CDLL("libisal.so.2").crc32_iscsi
_dispatcher.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
_dispatcher.restype = ctypes.c_uint32
_SAMPLE = os.urandom(4096)

#: what runs in the fresh thread before the timed hashing
BEFORE: dict[str, Callable[[], object]] = {
    "no CRC": lambda: None,
    "virtrbd.crc32c": lambda: crc32c.value(_SAMPLE),
    "ISA-L's dispatcher": lambda: _dispatcher(_SAMPLE, len(_SAMPLE), 0),
}


def shapes(total: int) -> dict[str, list[list[tuple[int, bytes]]]]:
    """Chunks of each shape: parts ``(start, data)`` as ``digest_of_parts`` takes them."""
    dense = [[(0, os.urandom(CHUNK))] for _ in range(total // CHUNK)]
    sparse = [[(start, os.urandom(MiB)) for start in (0, 1536 << 10, 3 * MiB)] for _ in range(total // CHUNK)]
    return {"dense chunks": dense, "sparse chunks": sparse}


def hashing_seconds(before: Callable[[], object], chunks: list[list[tuple[int, bytes]]]) -> float:
    """CPU seconds of hashing ``chunks`` in a new thread that first ran ``before``."""
    spent: list[float] = []

    def work() -> None:
        before()
        started = time.thread_time()
        for parts in chunks:
            digest_of_parts(XXH3_CHUNKS, CHUNK, parts)
        spent.append(time.thread_time() - started)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return spent[0]


def crc_seconds(crc: Callable[[bytes], object], data: bytes, rounds: int = 4) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        crc(data)
    return (time.perf_counter() - started) / rounds


def measure(runs: int = 5, total: int = 256 * MiB) -> list[Row]:
    rows: list[Row] = []
    names = list(BEFORE)
    for shape, chunks in shapes(total).items():
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_no in range(runs):
            for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                times[name].append(hashing_seconds(BEFORE[name], chunks))
        t = {name: statistics.median(samples) for name, samples in times.items()}
        rows.append(Row(f"XXH3, {shape}, after our CRC", t["virtrbd.crc32c"], "after no CRC", t["no CRC"],
                        target="<= 1.1x", passed=t["virtrbd.crc32c"] <= 1.1 * t["no CRC"]))
        rows.append(Row(f"XXH3, {shape}, after ISA-L's pick", t["ISA-L's dispatcher"], "after no CRC",
                        t["no CRC"]))
    data = os.urandom(total)
    ours: list[float] = []
    theirs: list[float] = []

    def in_thread(crc: Callable[[bytes], object], into: list[float]) -> None:
        # the dispatcher's version would leave this thread's state dirty: each CRC in a thread of its own
        thread = threading.Thread(target=lambda: into.append(crc_seconds(crc, data)))
        thread.start()
        thread.join()

    for _ in range(runs):
        in_thread(crc32c.value, ours)
        in_thread(lambda b: _dispatcher(b, len(b), 0), theirs)
    rows.append(Row(f"CRC-32C of {total // MiB} MiB", statistics.median(ours), "ISA-L's dispatcher",
                    statistics.median(theirs)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    title = f"checksums in one thread (medians of {args.runs} alternating rounds, CPU seconds of the hashing)"
    return 0 if print_table(title, measure(args.runs)) else 1


if __name__ == "__main__":
    sys.exit(main())
