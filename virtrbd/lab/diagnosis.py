"""Why a lab is not healthy, in words: which daemon is gone and what it said last, or what Ceph reports.

``Lab.is_healthy`` is "no problems"; when there are some, an operator (or a
CI log read after the machine is gone) needs them in words.  Everything here only
reads: the lab's record, /proc, the daemons' logs and, when every daemon runs,
the monitor's health report through an admin connection with short timeouts.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import libvirt_side, processes

#: lines of a daemon's own log that tell why it ended
_LAST_WORDS = ("abort", "assert", "caught signal", "terminate", "fatal", "error", "no space", "oom")


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
            found.append(f"{daemon.name} (pid {daemon.pid}) is gone{_last_words(cluster.logs, daemon.name)}")
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


def _last_words(logs: Path, name: str) -> str:
    """What a daemon wrote last that looks like a reason for ending, from its stdout or its Ceph log."""
    for path in (logs / f"{name}.stdout", logs / f"ceph-{name}.log"):
        try:
            lines = path.read_text(errors="replace").splitlines()[-400:]
        except OSError:
            continue
        telling = [line.strip() for line in lines if any(word in line.lower() for word in _LAST_WORDS)]
        if telling:
            return f"; {path.name} ends with: {telling[-1][:300]}"
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
