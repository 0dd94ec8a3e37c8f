"""The corpus of rbd disks (tests/xml_corpus.py), printed by virtrbd, in domains of the lab's real libvirtd:
libvirt accepts each and its ``dumpxml`` gives the same disk back."""

from __future__ import annotations

import dataclasses
import uuid

import libvirt
import pytest

from virtrbd.libvirt.host import Host
from virtrbd.xml import safe
from virtrbd.xml.disk import DiskDef
from virtrbd.xml.domain_disks import read_disk

from ..xml_corpus import CORPUS

DISKS = [(name, text) for name, kind, text in CORPUS if kind == "disk"]
# libvirt spells out its defaults and adds the devices' addresses and aliases
ADDED_BY_LIBVIRT = {("encryption", "engine")}


def shape(element) -> set[tuple[str, tuple[tuple[str, str], ...], str]]:
    """Every element of a disk as (path, attributes, text): what libvirt must keep, whatever the order."""
    tree = element.getroottree()
    top = tree.getpath(element)
    found = set()
    for node in element.iter():
        if not isinstance(node.tag, str):
            continue
        attributes = tuple(sorted((k, v) for k, v in node.attrib.items() if (node.tag, k) not in ADDED_BY_LIBVIRT))
        found.add((tree.getpath(node).removeprefix(top), attributes, (node.text or "").strip()))
    return found


def libvirt_default(disk: DiskDef) -> DiskDef:
    if disk.encryption is not None and disk.encryption.engine is None:
        return dataclasses.replace(disk, encryption=dataclasses.replace(disk.encryption, engine="qemu"))
    return disk


def test_libvirtd_takes_every_printed_disk_and_gives_it_back(lab):
    name = f"virtrbd-corpus-{uuid.uuid4().hex[:8]}"
    domain_type = lab.state["libvirt"]["domain_type"]
    differences = []
    with Host(lab.config.libvirt.uri) as host:
        for shape_name, text in DISKS:
            printed = DiskDef.from_xml(text).to_xml()        # what `virtrbd xml disk --from` prints
            domain = host.conn.defineXML(
                f"<domain type='{domain_type}'><name>{name}</name><memory unit='MiB'>64</memory>"
                f"<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{printed}</devices></domain>")
            try:
                back = safe.parse(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("devices/disk")
            finally:
                domain.undefine()
            ours = safe.parse(printed)
            if read_disk(back) != libvirt_default(DiskDef.from_element(ours)):
                differences.append(f"{shape_name}: {read_disk(back)}")
            elif not shape(ours) <= shape(back):
                differences.append(f"{shape_name}: libvirt lost {sorted(shape(ours) - shape(back))}")
    assert len(DISKS) >= 500
    assert differences == [], "\n".join(differences[:10])


@pytest.mark.parametrize("probe", ["<disk type='network' device='disk'><source protocol='rbd' name='rbd/x'>"
                                   "<host name='h'/></source><target dev='vda'/><encryption format='luks'/></disk>"])
def test_the_comparison_sees_what_libvirt_drops(probe):
    """shape() must notice a lost element: a comparison that cannot fail proves nothing."""
    full = safe.parse(probe)
    trimmed = safe.parse(probe.replace("<encryption format='luks'/>", ""))
    assert not shape(full) <= shape(trimmed)
