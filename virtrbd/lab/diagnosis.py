"""Why a lab is not healthy, in words: which daemon is gone and what it said last, or what Ceph reports.

``Lab.is_healthy`` is "no problems"; when there are some, an operator (or a
CI log read after the machine is gone) needs them in words.  Everything here only
reads: the lab's record, /proc, the daemons' logs and, when every daemon runs,
the monitor's health report through an admin connection with short timeouts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import libvirt_side, processes

#: what the line that says why a Ceph daemon died holds, most telling first: a crash ends with a backtrace,
#: whose last lines (``_start()``) say nothing, and the signal it caught says only that it aborted
CAUSES = ("FAILED ceph_assert", "terminate called", "No space left", " failed", " error", "ERROR", "fatal",
          "Caught signal")


@dataclass(frozen=True)
class LastWords:
    """What a daemon wrote before it ended: in which file, the line that names a cause (if one does), and
    the last lines."""

    source: Path
    cause: str | None
    last: list[str]


def last_words(logs: Path, name: str) -> list[LastWords]:
    """What the daemon's output, then its Ceph log, hold at their end (the newest lines count: the output
    file is appended to at every start); a file without a line is left out."""
    found = []
    for path in (logs / f"{name}.stdout", logs / f"ceph-{name}.log"):
        try:
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines()[-1000:] if line.strip()]
        except OSError:
            continue
        if lines:
            cause = next((line for marker in CAUSES for line in reversed(lines) if marker in line), None)
            found.append(LastWords(path, cause, lines[-3:]))
    return found


def problems(lab, state: dict, client_error: str | None) -> list[str]:
    """One line per thing that is wrong with the lab; [] when nothing is."""
    if not state:
        return [f"no lab at {lab.root}"]
    if not state.get("ready"):
        return [f"the lab at {lab.root} never finished coming up"]
    found = []
    cluster = lab.ceph_cluster(state)
    for record in state.get("daemons", []):
        daemon = processes.Daemon(record["name"], record["pid"], record["marker"])
        if record.get("stopped"):
            found.append(f"{daemon.name} was stopped on purpose ('virtrbd lab start {daemon.name}')")
        elif not processes.is_ours(daemon):
            found.append(f"{daemon.name} (pid {daemon.pid}) is gone{_why_gone(cluster.logs, daemon.name)}")
    if client_error is not None:
        found.append(f"client.{cluster.spec.client_id} cannot list pool {cluster.spec.pool}: {client_error}")
        if not found[:-1]:
            found += ceph_health(cluster)
    return found


def dead_hypervisors(state: dict) -> list[dict]:
    """The records of libvirtd and virtlogd (host a's or b's) that the lab started and that ended: they are
    started again, where a dead Ceph daemon means a new lab (its store may be gone with it)."""
    return [record for record in state.get("daemons", [])
            if libvirt_side.is_hypervisor_daemon(record["name"]) and not record.get("stopped")
            and not processes.is_ours(processes.Daemon(record["name"], record["pid"], record["marker"]))]


def client_error(conf_file: Path, timeout: int) -> str | None:
    """Why the lab's restricted client cannot list the pool within ``timeout``; None when it can."""
    import dataclasses

    from .. import config as config_module
    from ..ceph import Cluster
    from ..errors import VirtrbdError

    if not conf_file.exists():
        return f"{conf_file} is missing"
    try:
        conf = config_module.load(conf_file)
        conf = dataclasses.replace(conf, ceph=dataclasses.replace(
            conf.ceph, client_mount_timeout=timeout, rados_mon_op_timeout=timeout, rados_osd_op_timeout=timeout))
        with Cluster(conf) as cluster:
            cluster.image_names(conf.ceph.pool)
        return None
    except VirtrbdError as exc:
        return str(exc)


def _why_gone(logs: Path, name: str) -> str:
    """The first of its files that names a cause: a daemon that ran a while may have said why only in its log."""
    for words in last_words(logs, name):
        if words.cause is not None:
            return f"; {words.source.name} ends with: {words.cause[:300]}"
    return "; its logs give no reason (killed from outside? the kernel's OOM killer?)"


def ceph_health(cluster, timeout: float = 5) -> list[str]:
    """The monitor's health checks (e.g. OSD_DOWN, PG_AVAILABILITY, OSD_FULL), one line each."""
    import rados

    from ..errors import LabError
    from .ceph_cluster import mon_command

    handle = cluster.admin_handle(client_mount_timeout=timeout, rados_mon_op_timeout=timeout,
                                  rados_osd_op_timeout=timeout)
    try:
        handle.connect()
        report = json.loads(mon_command(handle, prefix="health", detail="detail", format="json"))
    except (rados.Error, LabError, ValueError) as exc:
        return [f"the monitor does not answer the admin either: {exc}"]
    finally:
        handle.shutdown()
    checks = report.get("checks", {})
    if not checks:
        return [f"the monitor reports {report.get('status', 'nothing')}"]
    return [f"ceph health: {name}: {check.get('summary', {}).get('message', '')}" for name, check in checks.items()]
