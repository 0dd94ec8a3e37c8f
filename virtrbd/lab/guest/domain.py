"""The domain document of a lab guest: the kit booted directly, rbd disks as virtrbd writes them, the agent.

Disks are ``virtrbd xml disk``'s documents (first vda, then vdb, …); with
``clone_of`` the first carries virtrbd's clone markup, so that the qemu hook
makes it at start.  The serial console goes to a file the lab keeps, which is
what a failure to come up shows the tail of.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from ...config import Config
from ...libvirt import policy
from ...spec import ImageSpec
from ...xml import clone_markup
from .kit import Kit

AGENT_CHANNEL = "org.qemu.guest_agent.0"
#: the kernel's command line: the serial console, a panic powers off (the lab sees the domain end)
CMDLINE = "console=ttyS0 panic=-1 quiet"


@dataclass(frozen=True)
class GuestSpec:
    """What ``vm create`` was asked for."""

    name: str
    disks: tuple[ImageSpec, ...]
    clone_of: ImageSpec | None = None
    ephemeral: bool = False
    memory_mib: int = 256


def targets(count: int) -> list[str]:
    """vda, vdb, … for ``count`` disks."""
    if not 0 <= count <= 26:
        raise ValueError("a guest has at most 26 disks")
    return [f"vd{chr(ord('a') + index)}" for index in range(count)]


def guest_xml(config: Config, spec: GuestSpec, kit: Kit, *, domain_type: str, console: Path) -> str:
    root = etree.Element("domain", type=domain_type)
    etree.SubElement(root, "name").text = spec.name
    etree.SubElement(root, "uuid").text = str(uuid.uuid4())
    etree.SubElement(root, "memory", unit="MiB").text = str(spec.memory_mib)
    etree.SubElement(root, "vcpu").text = "1"
    if spec.clone_of is not None:
        markup = clone_markup.CloneMarkup("vda", spec.clone_of, spec.ephemeral)
        etree.SubElement(root, "metadata").append(clone_markup.render([markup]))
    os_node = etree.SubElement(root, "os")
    etree.SubElement(os_node, "type", arch="x86_64", machine="pc").text = "hvm"
    etree.SubElement(os_node, "kernel").text = str(kit.kernel)
    etree.SubElement(os_node, "initrd").text = str(kit.initrd)
    etree.SubElement(os_node, "cmdline").text = CMDLINE
    features = etree.SubElement(root, "features")       # ACPI: the guest powers off instead of halting
    etree.SubElement(features, "acpi")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        etree.SubElement(root, event).text = "destroy"
    devices = etree.SubElement(root, "devices")
    for image, target in zip(spec.disks, targets(len(spec.disks)), strict=True):
        disk = policy.disk_def(config, image, target, bus="virtio", cache="none")
        devices.append(disk.to_element(config.xml.templates))
    serial = etree.SubElement(devices, "serial", type="file")
    etree.SubElement(serial, "source", path=str(console), append="on")     # a migration's destination too
    etree.SubElement(serial, "target", port="0")
    channel = etree.SubElement(devices, "channel", type="unix")
    etree.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    etree.SubElement(devices, "memballoon", model="none")
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode")
