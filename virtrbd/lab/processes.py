"""Daemons the lab starts, recorded so that it stops those and nothing else.

A daemon is recorded with its PID and a marker that must appear in its command
line (the lab's ceph.conf path, or the daemon's name); ``stop`` only signals a
recorded PID whose /proc/PID/cmdline still carries that marker, so a recycled
PID is never killed.  Liveness looks at the process state, not at the mere
existence of /proc/PID: in these sandboxes PID 1 reaps orphans slowly and a
killed daemon lingers as a zombie for a while.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import LabError

log = logging.getLogger(__name__)

#: Popen objects of daemons started by this process, reaped when they are stopped
_children: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class Daemon:
    name: str       # "mon.a", "osd.0", "libvirtd", …
    pid: int
    marker: str     # a string its cmdline must contain for it to be ours

    def to_dict(self) -> dict:
        return asdict(self)


def state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, D, Z, …) or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("State:"):
                    return line.split()[1]
    except OSError:
        return None
    return None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def still_exiting(pid: int) -> bool:
    """The thread-group leader has exited but other threads still run: the process holds its files and
    sockets until the last of them is gone, so a port it listened on is not free yet."""
    if state(pid) != "Z":
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_ours(daemon: Daemon) -> bool:
    return alive(daemon.pid) and daemon.marker in cmdline(daemon.pid)


def start(name: str, argv: list[str], log_path: Path, marker: str, env: dict[str, str] | None = None) -> Daemon:
    """Start a foreground daemon in its own session, its output going to ``log_path``."""
    with open(log_path, "ab") as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, env=env)
        except OSError as exc:
            raise LabError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
    _children[proc.pid] = proc
    daemon = Daemon(name, proc.pid, marker)
    # Popen may return while the kernel is still setting up the new program: /proc/PID/cmdline is
    # empty for that moment, and a stop() then would not recognise the daemon as ours.
    deadline = time.monotonic() + 2
    while not is_ours(daemon) and alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.001)
    log.debug("started %s as pid %d", name, proc.pid)
    return daemon


def stop(daemons: list[Daemon], sig: int = signal.SIGKILL, wait: float = 15.0) -> list[Daemon]:
    """Signal every recorded daemon that is still ours; wait until they are gone.

    Returns the daemons that are still alive when ``wait`` runs out.
    """
    signalled = []
    for daemon in daemons:
        if is_ours(daemon):
            try:
                os.kill(daemon.pid, sig)
                signalled.append(daemon)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait
    while True:
        for daemon in signalled:
            child = _children.get(daemon.pid)
            if child is not None and child.poll() is not None:
                del _children[daemon.pid]
        # not alive(): a reaped PID may be reused at once; a leader gone before its threads still counts
        left = [d for d in signalled if is_ours(d) or still_exiting(d.pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)
