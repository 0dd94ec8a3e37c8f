"""A domain as domain-level work sees it: its rbd disks, its state, its guest agent's freeze and thaw.

The disks are read from the domain's current document (the live one while it
runs), so a disk attached since the start counts.  A writable disk that is not
an rbd image is refused, named: a snapshot of the domain could not hold it.
Freezing goes through libvirt's ``virDomainFSFreeze``, not a raw agent
command, so libvirt knows of it and the domain is not marked tainted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LibvirtError, UsageError
from ..spec import ImageSpec
from .host import Host, libvirt_translated


@dataclass(frozen=True)
class DomainDisk:
    target: str
    image: ImageSpec


@dataclass(frozen=True)
class DomainFacts:
    """What a snapshot of a whole domain needs to know before it starts."""

    name: str
    uuid: str
    state: str                      # "running", "paused", "shut off" or libvirt's other states, in words
    shut_down_cleanly: bool         # off after a shutdown the guest did itself (not destroyed, not crashed)
    disks: tuple[DomainDisk, ...]

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def active(self) -> bool:
        return self.state not in ("shut off", "crashed")


_STATES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down", 5: "shut off",
           6: "crashed", 7: "suspended by the guest"}


class Domain:
    """One defined domain of ``host``, found by name."""

    def __init__(self, host: Host, name: str | None = None, *, uuid: str | None = None):
        """By ``name``, or by ``uuid`` (what a thaw guard holds: a name can be reused, a UUID cannot)."""
        self.host = host
        if uuid is not None:
            with libvirt_translated(host.libvirt, f"domain {uuid}"):
                self.dom = host.conn.lookupByUUIDString(uuid)
            self.name = self.dom.name()
            return
        found = host.find_domain(name or "")
        if found is None:
            raise LibvirtError(f"domain {name}: not defined on {host.uri}")
        self.dom, self.name = found, name

    def facts(self) -> DomainFacts:
        """Its state and rbd disks; a writable disk elsewhere, or an rbd disk virtrbd cannot read, is refused."""
        from ..xml import safe
        from ..xml.domain_disks import ForeignDisk, other_disks, rbd_disks
        lv = self.host.libvirt
        with libvirt_translated(lv, f"domain {self.name}"):
            xml = self.dom.XMLDesc(0)
            state, reason = self.dom.state()
            uuid = self.dom.UUIDString()
        root = safe.parse(xml, what="domain XML")          # read once, for both kinds of disk
        outside = other_disks(root)
        if outside:
            raise UsageError(f"domain {self.name}: disk {', '.join(outside)} is not an rbd image; a snapshot "
                             f"of the domain could not hold it")
        disks = []
        for disk in rbd_disks(root):
            if isinstance(disk, ForeignDisk):
                raise UsageError(f"domain {self.name}: {disk.what}: {disk.reason}")
            if disk.image.snapshot is None and not disk.read_only:
                disks.append(DomainDisk(disk.target, disk.image))
        if not disks:
            raise UsageError(f"domain {self.name}: has no writable rbd disk")
        clean = state == lv.VIR_DOMAIN_SHUTOFF and reason == lv.VIR_DOMAIN_SHUTOFF_SHUTDOWN
        return DomainFacts(self.name, uuid, _STATES.get(state, f"state {state}"), clean, tuple(disks))

    def freeze(self) -> int:
        """Freeze the guest's filesystems through its agent; how many it froze."""
        with libvirt_translated(self.host.libvirt, f"freezing the filesystems of {self.name}"):
            return self.dom.fsFreeze()

    def thaw(self) -> int:
        """Thaw the guest's filesystems; how many the agent thawed (0 when none was frozen)."""
        with libvirt_translated(self.host.libvirt, f"thawing the filesystems of {self.name}"):
            return self.dom.fsThaw()

    def pause(self) -> None:
        with libvirt_translated(self.host.libvirt, f"pausing {self.name}"):
            self.dom.suspend()

    def resume(self) -> None:
        with libvirt_translated(self.host.libvirt, f"resuming {self.name}"):
            self.dom.resume()

    def paused_by_a_user(self) -> bool:
        lv = self.host.libvirt
        with libvirt_translated(lv, f"domain {self.name}"):
            state, reason = self.dom.state()
        return state == lv.VIR_DOMAIN_PAUSED and reason == lv.VIR_DOMAIN_PAUSED_USER
