"""What ``virtrbd lab status`` reports: the lab's daemons, its problems, its hypervisors, its guests."""

from __future__ import annotations

from . import libvirt_side, processes
from .guest import accelerator_said


def status(lab, state: dict) -> dict:
    if not state:
        return {"root": str(lab.root), "state": "down"}
    daemons = [{"name": d["name"], "pid": d["pid"],
                "running": not d.get("stopped") and processes.is_ours(processes.Daemon(d["name"], d["pid"],
                                                                                       d["marker"])),
                "stopped": bool(d.get("stopped"))} for d in state.get("daemons", [])]
    problems = lab.problems(state)
    return {
        "root": str(lab.root),
        "state": "degraded" if problems else "up",
        "problems": problems,
        "config": str(lab.conf_file),
        "monitor": lab.ceph_cluster(state).mon_addr,
        "daemons": daemons,
        "libvirt": state.get("libvirt"),
        "libvirt_state": None if not state.get("libvirt") else
        ("up" if lab._libvirt_healthy(state) else "degraded"),
        "rbd_backend": lab.rbd_backend(state) if state.get("libvirt") else None,
        "hosts": hosts(lab, state),
        "guests": accelerator_said(lab.guest_folder),
        "seconds": {"ceph": state.get("ceph_seconds"), "libvirt": state.get("libvirt_seconds")},
    }


def hosts(lab, state: dict) -> list[dict]:
    """The lab's hypervisors: a, and b when it has one; each with its libvirt URI and state."""
    if not state.get("libvirt"):
        return []
    found = [{"name": "a", "uri": libvirt_side.URI, "config": str(lab.conf_file),
              "state": "up" if lab._libvirt_healthy(state) else "degraded"}]
    if state.get("hosts"):
        b = lab.second_host(state)
        found.append({"name": "b", **state["hosts"]["b"],
                      "state": "up" if b.healthy(state["libvirt"]) else "degraded"})
    return found
