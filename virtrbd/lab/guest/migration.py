"""Lab guests across the lab's hypervisors: which host runs one, and live migration between a and b.

A migration is libvirt's, live, with QEMU's stream on 127.0.0.1 only: direct
(this process talks to both libvirtds) or peer-to-peer (the source's libvirtd
talks to the destination's: over TCP from a to b, through a's socket bound into
b's namespace from b to a).  Without ``persistent`` the guest is transient on
the destination and its definition stays on the source, as ``virsh migrate
--live`` leaves it; ``undefine_source`` moves the definition.

QEMU pauses the guest for its last pass once it estimates that pass fits in
its downtime limit, 300 ms by default; the lab asks for ``MAX_DOWNTIME_MS``
(libvirt keeps the setting on the source's QEMU for its next migration).
Figures: docs/performance.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ... import config as config_module
from ...errors import LabError
from ...libvirt.host import Host, libvirt_translated

#: the pause QEMU may plan for the end of a live migration (libvirt's own measure adds ~10-20 ms)
MAX_DOWNTIME_MS = 40


@dataclass(frozen=True)
class Migration:
    name: str
    source: str
    destination: str
    p2p: bool
    seconds: float              # the call, as its caller waited for it
    job_ms: int | None          # libvirt's time for the migration job, from the destination's completed job
    downtime_ms: int | None     # the time the guest was paused


def uris(lab) -> dict[str, str]:
    """The libvirt URI of each of the lab's hypervisors, by name."""
    return {name: config_module.load(path).libvirt.uri for name, path in lab.host_configs().items()}


def defined_on(lab, name: str) -> list[str]:
    """The hosts that know guest ``name`` (running, or defined), the one that runs it first."""
    running: list[str] = []
    defined: list[str] = []
    for host, uri in uris(lab).items():
        with Host(uri) as hypervisor:
            domain = hypervisor.find_domain(name)
            if domain is not None:
                (running if domain.isActive() else defined).append(host)
    return running + defined


def locate(lab, name: str) -> str:
    """The host that runs guest ``name``, or, when none runs it, the first that defines it."""
    hosts = defined_on(lab, name)
    if not hosts:
        raise LabError(f"guest {name}: not defined on any of the lab's hosts")
    return hosts[0]


def migrate(lab, name: str, to: str, *, p2p: bool = False, persistent: bool = False,
            undefine_source: bool = False) -> Migration:
    """Live-migrate the running guest ``name`` to host ``to``; return once it runs there."""
    addresses = uris(lab)
    if to not in addresses:
        raise LabError(f"host {to}: the lab has no such hypervisor (it has {', '.join(addresses)})")
    source = locate(lab, name)
    if source == to:
        raise LabError(f"guest {name}: already runs on host {to}")
    with Host(addresses[source]) as origin, Host(addresses[to]) as target:
        lv = origin.libvirt
        domain = origin.find_domain(name)
        if domain is None or not domain.isActive():
            raise LabError(f"guest {name}: not running (on host {source}); only a running guest migrates live")
        flags = lv.VIR_MIGRATE_LIVE
        if persistent or undefine_source:
            flags |= lv.VIR_MIGRATE_PERSIST_DEST
        if undefine_source:
            flags |= lv.VIR_MIGRATE_UNDEFINE_SOURCE
        params = {lv.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1", lv.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "127.0.0.1"}
        started = time.monotonic()
        with libvirt_translated(lv, f"migrating guest {name} from host {source} to host {to}"):
            domain.migrateSetMaxDowntime(MAX_DOWNTIME_MS, 0)
            if p2p:
                domain.migrateToURI3(_peer_uri(lab, source, to), params, flags | lv.VIR_MIGRATE_PEER2PEER)
            else:
                domain.migrate3(target.conn, params, flags)
        seconds = time.monotonic() - started
        arrived = target.find_domain(name)
        stats = _completed(lv, arrived)
    return Migration(name, source, to, p2p, seconds, stats.get("time_elapsed"), stats.get("downtime"))


def _peer_uri(lab, source: str, to: str) -> str:
    """The destination's URI as the source's libvirtd reaches it."""
    second = lab.second_host()
    return {("a", "b"): second.tcp_uri, ("b", "a"): second.a_uri}[(source, to)]


def _completed(lv, domain) -> dict:
    """The destination's statistics of the migration it completed ({} where libvirt has none)."""
    try:
        return dict(domain.jobStats(lv.VIR_DOMAIN_JOB_STATS_COMPLETED)) if domain is not None else {}
    except lv.libvirtError:
        return {}
