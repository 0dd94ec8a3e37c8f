"""A domain's rbd disks, read one by one.

A domain (``virsh dumpxml``) may hold disks virtrbd does not act on: a data
disk on rbd formatted as vmdk, an image whose name is libvirt's older
``pool/image:option=value``, an rbd cdrom.  Each is read on its own, so such a
disk never stops the work on another; it comes back as a ``ForeignDisk`` that
says why and that prints exactly as it was read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from ..errors import InvalidXMLError
from . import nodes, safe
from .disk import DiskDef, is_rbd_disk


@dataclass(frozen=True)
class ForeignDisk:
    """An rbd disk virtrbd reads but does not act on, kept verbatim."""

    target: str | None
    reason: str                 # why virtrbd leaves it alone, for a warning or an error
    origin: etree._Element = field(compare=False, repr=False)

    @property
    def what(self) -> str:
        return f"disk {self.target}" if self.target else "disk"

    def to_element(self, template_dir: Path | None = None) -> etree._Element:
        return copy.deepcopy(self.origin)

    def to_xml(self, template_dir: Path | None = None) -> str:
        return safe.tostring(self.to_element(template_dir))


def read_disk(node: etree._Element) -> DiskDef | ForeignDisk:
    """One rbd ``<disk>``: the model virtrbd acts on, or why it does not (never an error)."""
    try:
        return DiskDef.from_element(node)
    except InvalidXMLError as exc:
        target = nodes.attr(node, "target", "dev")
        reason = str(exc).removeprefix(f"disk {target}: " if target else "disk: ")
        return ForeignDisk(target, reason, copy.deepcopy(node))


def rbd_disks(domain: etree._Element | str | bytes) -> list[DiskDef | ForeignDisk]:
    """Every rbd disk of a domain (``virsh dumpxml``), in document order; other disks are not read."""
    root = domain if isinstance(domain, etree._Element) else safe.parse(domain, what="domain XML")
    if root.tag != "domain":
        raise InvalidXMLError(f"expected a <domain> document, got <{root.tag}>")
    return [read_disk(disk) for disk in root.iterfind("devices/disk") if is_rbd_disk(disk)]


def other_disks(domain: etree._Element | str | bytes) -> list[str]:
    """The targets of a domain's writable disks that are not rbd images (files, block devices, …).

    A snapshot of a whole domain cannot hold them, so it names them instead of
    silently leaving them out; cdroms, floppies and read-only disks change
    nothing and are not counted.
    """
    root = domain if isinstance(domain, etree._Element) else safe.parse(domain, what="domain XML")
    found = []
    for disk in root.iterfind("devices/disk"):
        if is_rbd_disk(disk) or disk.get("device", "disk") not in ("disk", "lun") or disk.find("readonly") is not None:
            continue
        found.append(nodes.attr(disk, "target", "dev") or "(no target)")
    return found
