"""The disk model: literal XML, what it refuses, and how operators' templates shape it."""

from __future__ import annotations

import dataclasses

import pytest

from virtrbd.errors import InvalidXMLError
from virtrbd.monitor import Monitor
from virtrbd.spec import ImageSpec
from virtrbd.xml.common import SecretRef
from virtrbd.xml.disk import DiskDef
from virtrbd.xml.domain_disks import rbd_disks
from virtrbd.xml.encryption import Encryption

UUID = "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"
MON = (Monitor("127.0.0.1", 40100),)


def test_literal_xml_of_a_plain_disk():
    disk = DiskDef(ImageSpec("rbd", "vm1"), "vda", (Monitor("127.0.0.1", 40100), Monitor("2001:db8::1", 3300)),
                   "virt", SecretRef(uuid=UUID))
    assert disk.to_xml() == f"""<disk type="network" device="disk">
  <driver name="qemu" type="raw"/>
  <source protocol="rbd" name="rbd/vm1">
    <host name="127.0.0.1" port="40100"/>
    <host name="2001:db8::1" port="3300"/>
  </source>
  <auth username="virt">
    <secret type="ceph" uuid="{UUID}"/>
  </auth>
  <target dev="vda"/>
</disk>
"""


def test_literal_xml_of_a_snapshot_disk_with_tuning():
    disk = DiskDef(ImageSpec("rbd", "golden", "base"), "vdb", MON, "virt", SecretRef(usage="ceph virt"),
                   bus="virtio", cache="writeback", discard="unmap", read_only=True, serial="g1",
                   iotune=(("total_iops_sec", 500),))
    assert disk.to_xml() == """<disk type="network" device="disk">
  <driver name="qemu" type="raw" cache="writeback" discard="unmap"/>
  <source protocol="rbd" name="rbd/golden">
    <host name="127.0.0.1" port="40100"/>
    <snapshot name="base"/>
  </source>
  <auth username="virt">
    <secret type="ceph" usage="ceph virt"/>
  </auth>
  <target dev="vdb" bus="virtio"/>
  <readonly/>
  <serial>g1</serial>
  <iotune>
    <total_iops_sec>500</total_iops_sec>
  </iotune>
</disk>
"""


def test_iotune_order_does_not_matter():
    a = DiskDef(ImageSpec("rbd", "x"), "vda", MON, iotune=(("write_iops_sec", 1), ("read_iops_sec", 2)))
    b = DiskDef(ImageSpec("rbd", "x"), "vda", MON, iotune=(("read_iops_sec", 2), ("write_iops_sec", 1)))
    assert a == b and a.to_xml() == b.to_xml()


@pytest.mark.parametrize("changes, words", [
    (dict(target="xyz"), "not a disk device name"),
    (dict(target=""), "not a disk device name"),
    (dict(auth_username="virt"), "both a username and a secret"),
    (dict(secret=SecretRef(uuid=UUID)), "both a username and a secret"),
    (dict(bus="pci"), "bus 'pci' is not one of"),
    (dict(cache="fast"), "cache mode 'fast'"),
    (dict(discard="trim"), "discard mode 'trim'"),
    (dict(io="aio"), "io mode 'aio'"),
    (dict(config_file="ceph.conf"), "not an absolute path"),
    (dict(encryption="luks"), "not an Encryption"),
    (dict(image="rbd/vm1"), "not an ImageSpec"),
    (dict(serial="a/b"), "serial"),
    (dict(serial=" edge"), "serial"),
    (dict(serial="x" * 65), "at most 64"),
    (dict(iotune=(("total_iops_sec", -1),)), "whole number >= 0"),
    (dict(iotune=(("burst", 1),)), "unknown iotune limit 'burst'"),
    (dict(iotune=(("total_iops_sec", 1), ("read_iops_sec", 1))), "total_iops_sec excludes"),
    (dict(iotune=(("read_iops_sec", 1), ("read_iops_sec", 2))), "given twice"),
])
def test_constructor_refuses(changes, words):
    args = dict(image=ImageSpec("rbd", "vm1"), target="vda", monitors=MON)
    with pytest.raises(ValueError, match=words):
        DiskDef(**{**args, **changes})


def wrap(source: str = "<source protocol='rbd' name='rbd/vm1'><host name='h'/></source>", *, extra: str = "",
         attrs: str = "type='network' device='disk'") -> str:
    return f"<disk {attrs}>{source}<target dev='vda'/>{extra}</disk>"


@pytest.mark.parametrize("xml, words", [
    (wrap(attrs="type='file' device='disk'"), "not an rbd network disk"),
    (wrap("<source protocol='nbd' name='x'><host name='h'/></source>"), "not an rbd network disk"),
    (wrap(attrs="type='network' device='cdrom'"), "device 'cdrom'"),
    (wrap(extra="<driver name='qemu' type='qcow2'/>"), "raw rbd disks only"),
    (wrap("<source protocol='rbd' name='rbd/../x'><host name='h'/></source>"), "rbd/../x"),
    (wrap("<source protocol='rbd' name='a@b@c'><host name='h'/></source>"), "a@b@c"),
    (wrap("<source protocol='rbd' name='vm1'><host name='h'/></source>"), "is not POOL/IMAGE"),
    (wrap("<source protocol='rbd' name='rbd/x@s'><host name='h'/><snapshot name='t'/></source>",
          extra="<readonly/>"), "both in the source name and in <snapshot>"),
    (wrap(extra="<encryption format='aes'/>"), "encryption format 'aes'"),
    (wrap(extra="<encryption format='luks' engine='kernel'/>"), "encryption engine 'kernel'"),
    (wrap(extra="<encryption format='luks'><secret type='passphrase' uuid='x'/></encryption>"), "encryption: secret"),
    (wrap("<source protocol='rbd' name='rbd/x'><host name='h' port='70000'/></source>"), "out of range"),
    (wrap("<source protocol='rbd' name='rbd/x'><host name='bad_host!'/></source>"), "not a host name"),
    (wrap(extra="<auth username='virt'/>"), "<auth> without <secret>"),
    (wrap(extra=f"<auth username='virt'><secret type='iscsi' uuid='{UUID}'/></auth>"), "is not 'ceph'"),
    (wrap(extra="<auth username='virt'><secret type='ceph' uuid='nope'/></auth>"), "secret"),
    (wrap(extra="<iotune><total_iops_sec>lots</total_iops_sec></iotune>"), "not a whole number"),
    ("<domain/>", "expected a <disk> document"),
])
def test_parsing_refuses_in_one_line(xml, words):
    with pytest.raises(InvalidXMLError, match=words) as info:
        DiskDef.from_xml(xml)
    assert "\n" not in str(info.value)


def test_parse_names_the_target_in_errors():
    with pytest.raises(InvalidXMLError, match=r"^disk vda: "):
        DiskDef.from_xml(wrap("<source protocol='rbd' name='vm1'/>"))


@pytest.mark.parametrize("source, extra", [
    ("<source protocol='rbd' name='rbd/x'/>", ""),                                          # monitors from ceph.conf
    ("<source protocol='rbd' name='rbd/x'><config file='/etc/ceph/lab.conf'/></source>", ""),
    ("<source protocol='rbd' name='rbd/x'><host name='h'/><snapshot name='s'/></source>", ""),   # no <readonly/>
])
def test_what_libvirt_accepts_reads_although_virtrbd_would_build_it_otherwise(source, extra):
    text = wrap(source, extra=extra)
    disk = DiskDef.from_xml(text)
    assert DiskDef.from_xml(disk.to_xml()) == disk
    assert disk.to_xml() == DiskDef.from_xml(disk.to_xml()).to_xml()


def test_encryption_is_read_and_kept_where_it_stood():
    inside = wrap("<source protocol='rbd' name='rbd/x'><host name='h'/><encryption format='luks2' engine='librbd'>"
                  "<secret type='passphrase' usage='vm1 luks'/></encryption></source>")
    beside = wrap(extra=f"<encryption format='luks'><secret type='passphrase' uuid='{UUID}'/></encryption>")
    a, b = DiskDef.from_xml(inside), DiskDef.from_xml(beside)
    assert a.encryption == Encryption("luks2", "librbd", SecretRef(usage="vm1 luks"))
    assert b.encryption == Encryption("luks", None, SecretRef(uuid=UUID))
    assert a.to_element().find("source/encryption") is not None
    assert b.to_element().find("encryption") is not None and b.to_element().find("source/encryption") is None


def test_a_changed_model_read_from_a_document_keeps_what_virtrbd_does_not_model():
    text = wrap(extra="<encryption format='luks'><secret type='passphrase' uuid='" + UUID + "'/></encryption>"
                      "<boot order='2'/><x:ext xmlns:x='urn:example'/>")
    disk = dataclasses.replace(DiskDef.from_xml(text), target="vdc", cache="none")
    root = disk.to_element()
    assert root.find("target").get("dev") == "vdc" and root.find("driver").get("cache") == "none"
    assert root.find("boot").get("order") == "2" and root.find("{urn:example}ext") is not None
    assert DiskDef.from_element(root).encryption == Encryption("luks", None, SecretRef(uuid=UUID))


def test_a_new_encrypted_disk_puts_encryption_in_its_source():
    disk = DiskDef(ImageSpec("rbd", "vm1"), "vda", MON, encryption=Encryption("luks", "qemu", SecretRef(uuid=UUID)))
    root = disk.to_element()
    assert root.find("source/encryption").get("engine") == "qemu"
    assert DiskDef.from_element(root) == disk
    assert dataclasses.replace(disk, encryption=None).to_element().find(".//encryption") is None


def test_rbd_disks_needs_a_domain():
    with pytest.raises(InvalidXMLError, match="expected a <domain>"):
        rbd_disks("<disk/>")
    assert rbd_disks("<domain><devices/></domain>") == []


# --- operators' templates -----------------------------------------------------------------

PLAIN = DiskDef(ImageSpec("rbd", "vm1"), "vda", MON, "virt", SecretRef(uuid=UUID))


def test_template_defaults_apply_when_the_model_leaves_them_open(tmp_path):
    (tmp_path / "disk.xml").write_text(
        "<disk type='network' device='disk'><driver name='qemu' type='raw' cache='writeback' discard='unmap'/>"
        "<source protocol='rbd'><host/></source><auth><secret type='ceph'/></auth>"
        "<target dev='' bus='virtio'/><boot order='1'/></disk>")
    parsed = DiskDef.from_xml(PLAIN.to_xml(tmp_path))
    assert (parsed.cache, parsed.discard, parsed.bus) == ("writeback", "unmap", "virtio")
    assert "<boot order=\"1\"/>" in PLAIN.to_xml(tmp_path)


def test_the_model_overrides_template_defaults(tmp_path):
    (tmp_path / "disk.xml").write_text(
        "<disk><driver name='qemu' type='raw' cache='writeback'/><source/><target bus='virtio'/></disk>")
    disk = DiskDef(ImageSpec("rbd", "vm1"), "sda", MON, cache="none", bus="scsi")
    assert DiskDef.from_xml(disk.to_xml(tmp_path)) == disk


def test_auth_stays_inside_source_when_the_template_puts_it_there(tmp_path):
    (tmp_path / "disk.xml").write_text("<disk><source><host/><auth><secret/></auth></source><target/></disk>")
    xml = PLAIN.to_xml(tmp_path)
    assert "<auth" not in xml.split("</source>")[1]
    assert DiskDef.from_xml(xml) == PLAIN


def test_a_template_without_auth_gets_one(tmp_path):
    (tmp_path / "disk.xml").write_text("<disk><source/><target/></disk>")
    assert DiskDef.from_xml(PLAIN.to_xml(tmp_path)) == PLAIN


def test_model_iotune_replaces_the_templates(tmp_path):
    (tmp_path / "disk.xml").write_text("<disk><source/><target/><iotune><total_iops_sec>100</total_iops_sec>"
                                       "</iotune></disk>")
    assert DiskDef.from_xml(PLAIN.to_xml(tmp_path)).iotune == (("total_iops_sec", 100),)
    limited = DiskDef(ImageSpec("rbd", "vm1"), "vda", MON, iotune=(("read_iops_sec", 7),))
    assert DiskDef.from_xml(limited.to_xml(tmp_path)).iotune == (("read_iops_sec", 7),)
