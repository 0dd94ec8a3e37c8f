"""Small OS-less domains whose firmware reads their RBD disk, and the boot sector of their golden image.

For the lab's users, its demo and the tests: the golden's first sector only
halts the CPU (cli; hlt), so SeaBIOS reads it (QEMU counts the read) and the
guest then costs no CPU at all — dozens fit on a two-core machine.
"""

from __future__ import annotations

import time
import uuid

from lxml import etree

from ..config import Config
from ..libvirt import policy
from ..spec import ImageSpec
from ..xml import clone_markup

#: cli; hlt; jmp back to hlt — and the boot signature
BOOT_SECTOR = bytes([0xFA, 0xF4, 0xEB, 0xFD]).ljust(510, b"\0") + b"\x55\xaa"


def domain_xml(config: Config, name: str, image: str | ImageSpec, *, domain_type: str = "kvm",
               clone_of: str | ImageSpec | None = None, ephemeral: bool = False, memory_mib: int = 32,
               domain_uuid: str | None = None) -> str:
    """A minimal domain booting from one rbd disk (vda) of ``config``'s cluster.

    With ``clone_of`` the disk carries virtrbd's markup: the qemu hook makes the
    image as a clone of that snapshot when the domain starts.
    """
    image = image if isinstance(image, ImageSpec) else ImageSpec.parse(image, config.ceph.pool)
    disk = policy.disk_def(config, image, "vda", bus="virtio", cache="none")
    root = etree.Element("domain", type=domain_type)
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "uuid").text = domain_uuid or str(uuid.uuid4())
    etree.SubElement(root, "memory", unit="MiB").text = str(memory_mib)
    etree.SubElement(root, "vcpu").text = "1"
    if clone_of is not None:
        parent = clone_of if isinstance(clone_of, ImageSpec) else ImageSpec.parse(clone_of, config.ceph.pool)
        markup = clone_markup.CloneMarkup("vda", parent, ephemeral)
        etree.SubElement(root, "metadata").append(clone_markup.render([markup]))
    os_node = etree.SubElement(root, "os")
    etree.SubElement(os_node, "type", arch="x86_64", machine="pc").text = "hvm"
    etree.SubElement(os_node, "boot", dev="hd")
    devices = etree.SubElement(root, "devices")
    devices.append(disk.to_element(config.xml.templates))
    etree.SubElement(devices, "memballoon", model="none")
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode")


def wait_for_reads(domains, timeout: float = 120) -> dict[str, int]:
    """Wait until QEMU has read from every domain's vda; read requests per domain name (0: never)."""
    deadline = time.monotonic() + timeout
    reads = {dom.name(): 0 for dom in domains}
    pending = list(domains)
    while pending and time.monotonic() < deadline:
        for dom in list(pending):
            rd_req = dom.blockStats("vda")[0]
            if rd_req > 0:
                reads[dom.name()] = rd_req
                pending.remove(dom)
        if pending:
            time.sleep(0.5)
    return reads


def remove_domain(conn, name: str) -> None:
    """Destroy and undefine a domain, whatever state it is in (absent is fine)."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    try:
        dom.undefine()
    except libvirt.libvirtError:
        pass  # transient: gone with the destroy
