"""Faults on demand: stop, kill and start the lab's Ceph daemons by name (``mon.a``, ``osd.1``, ``mgr.x``).

For the reliability suite and for users who want to see what virtrbd does
when the cluster misbehaves.  A stopped daemon stays in the lab's record,
marked stopped, so ``status`` shows it, ``down`` does not look for it, and
``start`` brings it back with the command line it had.  Killing an OSD is only
survivable with bluestore (``--store bluestore``): a memstore OSD keeps its
data in memory and loses it with the process.
"""

from __future__ import annotations

import json
import logging
import signal
import time

from ..errors import LabError, UsageError
from ..probe import listening
from . import processes
from .ceph_cluster import mon_command
from .diagnosis import last_words

log = logging.getLogger(__name__)


def _argv(conf: str, name: str) -> list[str]:
    kind, _, ident = name.partition(".")
    binaries = {"mon": "ceph-mon", "osd": "ceph-osd", "mgr": "ceph-mgr"}
    return [binaries[kind], "-c", conf, "-i", ident, "-f"]


def _find(lab, state: dict, name: str) -> tuple[int, dict]:
    for index, record in enumerate(state.get("daemons", [])):
        if record["name"] == name:
            return index, record
    known = ", ".join(d["name"] for d in state.get("daemons", []) if d["name"].split(".")[0] in ("mon", "osd", "mgr"))
    raise UsageError(f"lab: no Ceph daemon {name!r} (known: {known or 'none — is the lab up?'})")


def stop(lab, name: str, *, kill: bool = False) -> None:
    """Stop a daemon (SIGTERM and wait), or ``kill`` it (SIGKILL, as a crash or a power cut would)."""
    with lab._locked():
        state = lab._read_state()
        index, record = _find(lab, state, name)
        if record.get("stopped"):
            return
        daemon = processes.Daemon(record["name"], record["pid"], record["marker"])
        left = processes.stop([daemon], signal.SIGKILL if kill else signal.SIGTERM, wait=30)
        if left:
            raise LabError(f"{name} (pid {daemon.pid}) did not stop")
        record["stopped"] = True
        state["daemons"][index] = record
        lab._write_state(state)


def start(lab, *names: str, timeout: float = 60) -> None:
    """Start stopped daemons again; wait until they serve (monitor listening, OSDs up, every PG active).

    A daemon that exits at start-up is marked stopped again (so the next ``start`` tries it, as the
    tests' clean-up does) and started once more, its last words logged: a bluestore OSD killed a moment
    before was seen to exit once in a fresh clone's run, and to start on the next try.
    """
    for attempt in (1, 2):
        with lab._locked():
            launched = [found for found in (launch(lab, name) for name in names) if found is not None]
        try:
            wait_serving(launched, timeout=timeout)
            return
        except LabError as exc:
            dead = [daemon.name for _, daemon in launched if not processes.alive(daemon.pid)]
            if not dead:
                raise
            _mark_stopped(lab, dead)
            if attempt == 2:
                raise
            log.warning("lab: %s; starting %s again", exc, ", ".join(dead))
            names = tuple(dead)


def _mark_stopped(lab, names: list[str]) -> None:
    with lab._locked():
        state = lab._read_state()
        for record in state.get("daemons", []):
            if record["name"] in names:
                record["stopped"] = True
        lab._write_state(state)


def launch(lab, name: str):
    """Start a stopped daemon (the caller holds the lab's lock); (cluster, daemon), or None if it ran."""
    state = lab._read_state()
    index, record = _find(lab, state, name)
    if not record.get("stopped"):
        return None
    cluster = lab.ceph_cluster(state)
    daemon = processes.start(name, _argv(str(cluster.conf), name), cluster.logs / f"{name}.stdout",
                             marker=str(cluster.conf))
    state["daemons"][index] = daemon.to_dict()
    lab._write_state(state)
    return cluster, daemon


def wait_serving(launched: list, *, timeout: float = 60) -> None:
    """For ``launch`` results: monitors first, then the OSDs up, then every PG active again."""
    launched = sorted(launched, key=lambda item: not item[1].name.startswith("mon."))
    for cluster, daemon in launched:
        if daemon.name.startswith("mon."):
            _wait_listening(cluster, daemon, timeout)
    osds = [(cluster, daemon) for cluster, daemon in launched if daemon.name.startswith("osd.")]
    if osds:
        _wait_osds_up(osds[0][0], [daemon for _, daemon in osds], timeout)


def stopped(lab) -> list[str]:
    return [d["name"] for d in lab._read_state().get("daemons", []) if d.get("stopped")]


def _wait_listening(cluster, daemon: processes.Daemon, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not processes.alive(daemon.pid):
            raise LabError(f"{daemon.name} exited at start-up: {_last_words(cluster, daemon.name)}")
        if listening("127.0.0.1", cluster.spec.port, timeout=0.2):
            return
        time.sleep(0.05)
    raise LabError(f"{daemon.name} did not listen within {timeout:g} s")


def _wait_osds_up(cluster, daemons: list[processes.Daemon], timeout: float) -> None:
    """Until the monitors see these OSDs up and every PG is active again."""
    def exited() -> str | None:
        return next((f"{d.name} exited at start-up: {_last_words(cluster, d.name)}" for d in daemons
                     if not processes.alive(d.pid)), None)

    _wait_osd_map(cluster, [daemon.name for daemon in daemons], up=True, timeout=timeout, failed=exited)


def _last_words(cluster, name: str) -> str:
    """Why a daemon ended: the line of its output (else of its log) that names a cause, and its last lines
    (the lab's folder goes with it)."""
    found = last_words(cluster.logs, name)
    if not found:
        return f"nothing in its output or log ({cluster.logs})"
    words = found[0]                        # its output first: a start that failed said why there
    last = " | ".join(words.last)
    if words.cause is None or words.cause in words.last:
        return last[-600:]
    return f"{words.cause[:300]} | … | {last[-300:]}"


def wait_marked_down(lab, *names: str, timeout: float = 60) -> None:
    """Until the monitors mark these (stopped or killed) OSDs down and every PG takes writes without them.

    Between a crash and that moment, I/O to the PGs the OSD led waits; an
    operator watching ``ceph -s`` sees the same window.
    """
    _wait_osd_map(lab.ceph_cluster(), list(names), up=False, timeout=timeout)


def _wait_osd_map(cluster, names: list[str], *, up: bool, timeout: float, failed=lambda: None) -> None:
    """Until the OSD map shows ``names`` up (or down) and writes reach every PG; ``failed`` may end it early."""
    import rados

    ids = {int(name.partition(".")[2]) for name in names}
    admin = cluster.admin_handle(client_mount_timeout=15, rados_mon_op_timeout=15)
    deadline = time.monotonic() + timeout
    try:
        admin.connect()
        while time.monotonic() < deadline:
            if (reason := failed()) is not None:
                raise LabError(reason)
            dump = json.loads(mon_command(admin, prefix="osd dump", format="json"))
            now_up = {o["osd"] for o in dump["osds"] if o["up"]}
            if (ids <= now_up if up else not ids & now_up) and _pool_answers(cluster):
                return
            time.sleep(0.2)
    except rados.Error as exc:
        raise LabError(f"waiting for {', '.join(names)}: {exc}") from None
    finally:
        admin.shutdown()
    raise LabError(f"{', '.join(names)} not {'up' if up else 'marked down'} with every PG active "
                   f"within {timeout:g} s")


def _pool_answers(cluster, probes: int = 64) -> bool:
    """Writes land in every PG of the pool again.

    The mgr's PG statistics lag behind a restart by seconds, so they cannot
    say when I/O works; writes to objects spread over all PGs can.  Each round
    uses a fresh connection: a client whose writes timed out while the OSDs
    restarted kept timing out here long after the cluster was healthy.
    """
    import rados

    handle = cluster.admin_handle(client_mount_timeout=5, rados_mon_op_timeout=5, rados_osd_op_timeout=2)
    try:
        handle.connect()
        ioctx = handle.open_ioctx(cluster.spec.pool)
        try:
            for i in range(probes):
                ioctx.write_full(f"virtrbd-lab-probe-{i}", b"x")
            for i in range(probes):
                ioctx.remove_object(f"virtrbd-lab-probe-{i}")
        finally:
            ioctx.close()
        return True
    except rados.Error:
        return False
    finally:
        handle.shutdown()
