"""Every document virtrbd emits, for varied inputs: valid for libvirt's RelaxNG schemas, and
model → XML → model is the identity.  Then libvirt's own output (``*-in.xml``, captured from
the lab's libvirtd 9.0) read into models and printed back as they were (``*-out.xml``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtrbd.monitor import Monitor
from virtrbd.spec import ImageSpec
from virtrbd.xml import safe, schema
from virtrbd.xml.common import SecretRef
from virtrbd.xml.disk import DiskDef, is_rbd_disk
from virtrbd.xml.domain_disks import ForeignDisk, rbd_disks
from virtrbd.xml.pool import PoolDef
from virtrbd.xml.secret import SecretDef
from virtrbd.xml.volume import VolumeDef

from .canon import canonical

DATA = Path(__file__).parent / "data"
UUID = "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"
UUID2 = "efe4f26e-73ae-407f-88a0-d4d55e3ffd14"

ONE = (Monitor("127.0.0.1", 40100),)
FIVE = tuple(Monitor(f"mon{i}.ceph.example.org", 3300) for i in range(5))
IPV6 = (Monitor("2001:db8::1", 3300), Monitor("2001:db8::2", 3300), Monitor("::1"))
MIXED = (Monitor("ceph-mon"), Monitor("192.0.2.7", 6789), Monitor("fe80::1", 3300))
BY_UUID = SecretRef(uuid=UUID)
BY_USAGE = SecretRef(usage="ceph-vms client.hv01")

SECRETS = [
    SecretDef("ceph client.virt"),
    SecretDef("ceph client.virt", uuid=UUID),
    SecretDef("virtrbd-lab client.virt", uuid=UUID2, description="cephx key of the lab"),
    SecretDef("client.hv01 secret", description="hypervisor 01"),
    SecretDef("ceph-vms client.hv01", uuid=UUID, private=False),
    SecretDef("x"),
    SecretDef("pool with spaces client.a", uuid=UUID2),
    SecretDef("ceph client.virt", description="clé de l'hyperviseur"),   # non-ASCII, an apostrophe
    SecretDef("a.b-c_d+e", uuid=UUID, description="<tags> & ampersands"),
    SecretDef("ceph " + "long" * 50, uuid=UUID2),
    SecretDef("  surrounded by spaces  ", description="read back stripped, so stored stripped"),
]

POOLS = [
    PoolDef("p1", "rbd", ONE),
    PoolDef("p-five", "vms", FIVE, "virt", BY_UUID),
    PoolDef("p-v6", "vms", IPV6, "virt", BY_USAGE),
    PoolDef("p-mixed", "rbd", MIXED, "hv01", BY_UUID, uuid=UUID2),
    PoolDef("p-opts", "rbd", ONE, "virt", BY_UUID, config_opts=(("client_mount_timeout", "3"),)),
    PoolDef("p-opts3", "vms", FIVE, "virt", BY_USAGE, uuid=UUID,
            config_opts=(("client_mount_timeout", "10"), ("rados_mon_op_timeout", "10"),
                         ("rados_osd_op_timeout", "10"))),
    PoolDef("p.dots", "pool.with.dots", (Monitor("10.0.0.1"),)),
    PoolDef("ceph-vms", "vms", (Monitor("::1", 3300),), "admin", SecretRef(usage="ceph admin")),
    PoolDef("p-noport", "rbd", (Monitor("mon.example.org"), Monitor("192.0.2.1")), "virt", BY_UUID),
    PoolDef("p-rbdcache", "rbd", IPV6, config_opts=(("rbd_cache", "false"), ("rbd_cache_size", "0"))),
]

VOLUMES = [
    VolumeDef("disk1", 1 << 30),
    VolumeDef("vm1-root", 20 * 2**30),
    VolumeDef("tiny", 1),
    VolumeDef("empty", 0),
    VolumeDef("odd-size", 12345678),
    VolumeDef("a", 4 * 2**40),
    VolumeDef("with.dots.and+plus", 512),
    VolumeDef("under_score", 8 << 20),
    VolumeDef("0digit-first", 64 << 20),
    VolumeDef("x" * 255, 4096),
]


def disk(image: str, target: str = "vda", monitors=ONE, **options) -> DiskDef:
    spec = ImageSpec.parse(image)
    options.setdefault("read_only", spec.snapshot is not None)
    return DiskDef(spec, target, monitors, **options)


DISKS = [
    disk("rbd/vm1"),
    disk("rbd/vm1", auth_username="virt", secret=BY_UUID),
    disk("vms/vm2", "vdb", FIVE, auth_username="hv01", secret=BY_USAGE),
    disk("vms/golden@base", "vdc", IPV6, auth_username="virt", secret=BY_UUID),
    disk("rbd/data", "sda", MIXED, auth_username="virt", secret=BY_USAGE, bus="scsi", cache="none",
         discard="unmap", io="native"),
    disk("rbd/ro", "vdd", read_only=True, serial="RO-DISK 1"),
    disk("rbd/limited", "vde", FIVE, auth_username="virt", secret=BY_UUID, cache="writeback",
         iotune=(("total_iops_sec", 500), ("read_bytes_sec", 100 << 20), ("write_bytes_sec", 50 << 20))),
    disk("rbd/sata", "sdb", bus="sata", io="io_uring", discard="ignore"),
    disk("rbd/snap.x@snap-1", "vdf", FIVE, auth_username="virt", secret=BY_USAGE, serial="s1",
         iotune=(("size_iops_sec", 4096), ("total_iops_sec_max", 1000), ("total_iops_sec_max_length", 60))),
    disk("rbd/ide", "hda", bus="ide", cache="directsync"),
    disk("pool.a/image+b", "vdaa", (Monitor("2001:db8::5"),), auth_username="virt", secret=BY_UUID,
         cache="unsafe", io="threads"),
]

CASES = ([("secret", d) for d in SECRETS] + [("pool", d) for d in POOLS] + [("volume", d) for d in VOLUMES]
         + [("disk", d) for d in DISKS])
MODELS = {"secret": SecretDef, "pool": PoolDef, "volume": VolumeDef, "disk": DiskDef}


@pytest.mark.parametrize("kind, document", CASES, ids=lambda value: value if isinstance(value, str) else "")
def test_valid_for_libvirt_and_round_trips_exactly(kind, document):
    element = document.to_element()
    schema.validate(element, kind)
    assert MODELS[kind].from_xml(document.to_xml()) == document


@pytest.mark.parametrize("kind", MODELS)
def test_at_least_ten_varied_inputs_per_document(kind):
    assert len({doc for k, doc in CASES if k == kind}) >= 10


def test_the_variety_the_acceptance_asks_for():
    assert any(len(d.monitors) == 1 for d in DISKS) and any(len(d.monitors) == 5 for d in DISKS)
    assert any(len(p.monitors) == 1 for p in POOLS) and any(len(p.monitors) == 5 for p in POOLS)
    assert any(m.is_ipv6 for d in DISKS for m in d.monitors) and any(m.is_ipv6 for p in POOLS for m in p.monitors)
    assert {d.secret for d in DISKS if d.secret} >= {BY_UUID, BY_USAGE}
    assert {p.secret for p in POOLS if p.secret} >= {BY_UUID, BY_USAGE}
    assert any(d.image.snapshot for d in DISKS) and any(not d.image.snapshot for d in DISKS)
    assert any(p.config_opts for p in POOLS)


PAIRS = sorted(DATA.glob("*-in.xml"))


@pytest.mark.parametrize("source", PAIRS, ids=lambda p: p.name)
def test_libvirts_output_reads_into_models(source):
    root = safe.parse(source.read_bytes())
    if root.tag == "domain":
        models = rbd_disks(root)
    else:
        models = [MODELS[root.tag].from_element(root)]
    expected = source.with_name(source.name.replace("-in.xml", "-out.xml")).read_text()
    assert "".join(m.to_xml() for m in models) == expected
    originals = [d for d in root.iterfind("devices/disk") if is_rbd_disk(d)] if root.tag == "domain" else [root]
    for model, original in zip(models, originals, strict=True):    # lossless: libvirt's own documents come back as they were
        assert canonical(model.to_element()) == canonical(original)
    for model in models:
        schema.validate(model.to_element(), "disk" if root.tag == "domain" else root.tag)


def test_a_domain_yields_only_its_rbd_disks():
    disks = rbd_disks((DATA / "domain-dumpxml-in.xml").read_bytes())
    # the qcow2 file disk (vdc) is not read; the rbd cdrom (hdc) is read, and left alone
    assert [d.target for d in disks] == ["vda", "sdb", "hdc"]
    assert isinstance(disks[2], ForeignDisk) and disks[2].reason == "device 'cdrom' is not 'disk'"
    assert disks[0].image == ImageSpec("rbd", "golden-debian12", "base") and disks[0].read_only
    assert disks[0].monitors == (Monitor("mon1.example.org", 3300), Monitor("192.0.2.11", 3300),
                                 Monitor("2001:db8::12", 3300))
    assert disks[1].secret == SecretRef(usage="ceph-vms client.hv01")  # its <auth> sat inside <source>


def test_a_whole_domain_validates_with_its_disk():
    domain = safe.parse((DATA / "domain-dumpxml-in.xml").read_bytes())
    schema.validate(domain, "domain")
