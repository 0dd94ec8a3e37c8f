"""Keeping the lab's ports out of the kernel's ephemeral range.

The lab's daemons listen on fixed ports (40100 and the 99 above it, and the
same for every other lab a test brings up), and those lie inside Linux's
ephemeral range (32768-60999): any outgoing connection on the machine may be
given one of them as its source port for a while, and a monitor that starts
then cannot bind ("unable to bind monitor").  Adding the lab's range to
``net.ipv4.ip_local_reserved_ports`` keeps the kernel from handing them out.
It is a setting of the running kernel only (gone at reboot), made where the
lab runs as root; elsewhere the lab goes on without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
#: the ports of the lab and of the labs tests and benchmarks bring up beside it (40100, 40300, 40700, 40800)
LABS = (40000, 40999)


def reserve(first: int, last: int, path: Path = RESERVED) -> bool:
    """Add ``first``-``last`` to the reserved ports unless they are in already; whether they are reserved."""
    try:
        current = path.read_text().strip()
    except OSError:
        return False
    if _covered(current, first, last):
        return True
    wanted = f"{current},{first}-{last}" if current else f"{first}-{last}"
    try:
        path.write_text(wanted + "\n")
    except OSError as exc:
        log.debug("cannot reserve ports %d-%d: %s", first, last, exc)
        return False
    log.info("reserved ports %d-%d from the kernel's ephemeral range (%s)", first, last, path)
    return True


def _covered(current: str, first: int, last: int) -> bool:
    reserved: set[int] = set()
    for part in filter(None, current.split(",")):
        low, _, high = part.partition("-")
        reserved.update(range(int(low), int(high or low) + 1))
    return all(port in reserved for port in range(first, last + 1))
