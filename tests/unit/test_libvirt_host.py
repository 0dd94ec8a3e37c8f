"""The libvirt side, against a mocked libvirt module (pytest-mock)."""

import base64

import libvirt
import pytest

from virtrbd import errors
from virtrbd.keyring import CephKey
from virtrbd.libvirt.host import Host
from virtrbd.monitor import Monitor
from virtrbd.spec import ImageSpec
from virtrbd.xml.common import SecretRef
from virtrbd.xml.disk import DiskDef
from virtrbd.xml.pool import PoolDef
from virtrbd.xml.secret import SecretDef
from virtrbd.xml.volume import VolumeDef

from .conftest import KEY
from .fakes import UUID, missing


def test_connection_failure_is_one_line(lv):
    exc = libvirt.libvirtError("x")
    exc.err = (38, 0, "Failed to connect socket to '/run/libvirt/libvirt-sock': No such file", 0, None, None, None, 0, 0)
    lv.open.side_effect = exc
    with pytest.raises(errors.LibvirtError, match="cannot connect to libvirt at qemu:///system: Failed to connect"):
        Host(libvirt_module=lv)


def test_ensure_secret_defines_it_then_sets_the_raw_key(lv, conn):
    conn.secretLookupByUUIDString.side_effect = missing(libvirt.VIR_ERR_NO_SECRET)
    secret = SecretDef("ceph client.virt", uuid=UUID)
    with Host(libvirt_module=lv) as host:
        host.ensure_secret(secret, CephKey(KEY))
    xml = conn.secretDefineXML.call_args.args[0]
    assert UUID in xml and KEY not in xml
    conn.secretDefineXML.return_value.setValue.assert_called_once_with(base64.b64decode(KEY), 0)
    conn.close.assert_called_once_with()


def test_ensure_secret_reuses_a_defined_one(lv, conn):
    with Host(libvirt_module=lv) as host:
        host.ensure_secret(SecretDef("ceph client.virt", uuid=UUID), CephKey(KEY))
    conn.secretDefineXML.assert_not_called()
    conn.secretLookupByUUIDString.return_value.setValue.assert_called_once()


def test_secret_key_reads_back_a_non_private_secret(lv, conn):
    conn.secretLookupByUUIDString.return_value.value.return_value = base64.b64decode(KEY)
    with Host(libvirt_module=lv) as host:
        assert host.secret_key(UUID) == CephKey(KEY)


def test_secret_key_of_a_private_secret_says_what_to_do(lv, conn):
    exc = libvirt.libvirtError("x")
    exc.err = (55, 0, "operation forbidden: secret is private", 0, None, None, None, 0, 0)
    conn.secretLookupByUUIDString.return_value.value.side_effect = exc
    with Host(libvirt_module=lv) as host, pytest.raises(errors.LibvirtError, match=r"set \[ceph\] keyring"):
        host.secret_key(UUID)


POOL = PoolDef("ceph", "rbd", (Monitor("127.0.0.1", 3300),), "virt", SecretRef(uuid=UUID))


def test_ensure_pool_defines_starts_and_autostarts(lv, conn):
    conn.storagePoolLookupByName.side_effect = missing(libvirt.VIR_ERR_NO_STORAGE_POOL)
    pool = conn.storagePoolDefineXML.return_value
    pool.isActive.return_value = 0
    pool.autostart.return_value = 0
    with Host(libvirt_module=lv) as host:
        host.ensure_pool(POOL)
    pool.create.assert_called_once_with(0)
    pool.setAutostart.assert_called_once_with(1)


def test_ensure_pool_twice_changes_nothing(lv, conn):
    pool = conn.storagePoolLookupByName.return_value
    pool.XMLDesc.return_value = POOL.to_xml().replace("<name>ceph</name>", f"<name>ceph</name><uuid>{UUID}</uuid>")
    pool.isActive.return_value = 1
    pool.autostart.return_value = 1
    with Host(libvirt_module=lv) as host:
        host.ensure_pool(POOL)
    conn.storagePoolDefineXML.assert_not_called()
    pool.create.assert_not_called()
    pool.setAutostart.assert_not_called()


def test_ensure_pool_refuses_to_clobber_a_different_pool(lv, conn):
    other = PoolDef("ceph", "other", (Monitor("10.0.0.1"),))
    conn.storagePoolLookupByName.return_value.XMLDesc.return_value = other.to_xml()
    with Host(libvirt_module=lv) as host, pytest.raises(errors.LibvirtError, match="already defined differently"):
        host.ensure_pool(POOL)
    conn.storagePoolDefineXML.assert_not_called()


# --- volumes ---------------------------------------------------------------------------------

def test_find_volume_asks_libvirts_list_and_never_refreshes(lv, conn):
    pool = conn.storagePoolLookupByName.return_value
    with Host(libvirt_module=lv) as host:
        assert host.find_volume("ceph", "vm1") is pool.storageVolLookupByName.return_value
    pool.storageVolLookupByName.assert_called_once_with("vm1")
    pool.refresh.assert_not_called()


def test_find_volume_unknown_to_libvirt_is_none(lv, conn):
    pool = conn.storagePoolLookupByName.return_value
    pool.storageVolLookupByName.side_effect = missing(libvirt.VIR_ERR_NO_STORAGE_VOL)
    with Host(libvirt_module=lv) as host:
        assert host.find_volume("ceph", "vm1") is None
    pool.refresh.assert_not_called()


def test_find_volume_in_an_undefined_pool_says_so(lv, conn):
    conn.storagePoolLookupByName.side_effect = missing(libvirt.VIR_ERR_NO_STORAGE_POOL)
    with Host(libvirt_module=lv) as host, pytest.raises(errors.NotFoundError, match="storage pool ceph: not defined"):
        host.find_volume("ceph", "vm1")


def test_create_volume_goes_through_the_pool(lv, conn):
    pool = conn.storagePoolLookupByName.return_value
    with Host(libvirt_module=lv) as host:
        host.create_volume("ceph", VolumeDef("vm1", 1 << 30))
    xml = pool.createXML.call_args.args[0]
    assert VolumeDef.from_xml(xml) == VolumeDef("vm1", 1 << 30)
    assert pool.createXML.call_args.args[1] == 0


def test_create_volume_failure_names_volume_and_pool(lv, conn):
    exc = libvirt.libvirtError("x")
    exc.err = (1, 0, "failed to create volume 'rbd/vm1': File exists", 0, None, None, None, 0, 0)
    conn.storagePoolLookupByName.return_value.createXML.side_effect = exc
    with Host(libvirt_module=lv) as host, \
            pytest.raises(errors.LibvirtError, match="creating volume vm1 in storage pool ceph: failed to create"):
        host.create_volume("ceph", VolumeDef("vm1", 1))


def test_refresh_pool_is_explicit(lv, conn):
    with Host(libvirt_module=lv) as host:
        host.refresh_pool("ceph")
    conn.storagePoolLookupByName.return_value.refresh.assert_called_once_with(0)


# --- domains ----------------------------------------------------------------------------------

DISK = DiskDef(ImageSpec("rbd", "vm1-data"), "vdb", (Monitor("127.0.0.1", 3300),), "virt", SecretRef(uuid=UUID))


def domain_xml(*disks: str) -> str:
    return f"<domain type='kvm'><name>vm1</name><devices>{''.join(disks)}</devices></domain>"


def test_attach_disk_adds_it_to_the_persistent_definition(lv, conn):
    domain = conn.lookupByName.return_value
    domain.XMLDesc.return_value = domain_xml()
    with Host(libvirt_module=lv) as host:
        assert host.attach_disk("vm1", DISK) is True
    domain.XMLDesc.assert_called_once_with(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml, flags = domain.attachDeviceFlags.call_args.args
    assert DiskDef.from_xml(xml) == DISK
    assert flags == libvirt.VIR_DOMAIN_AFFECT_CONFIG


def test_attach_disk_twice_changes_nothing(lv, conn):
    domain = conn.lookupByName.return_value
    # libvirt's version of our disk: bus and address filled in, auth where libvirt keeps it
    domain.XMLDesc.return_value = domain_xml(DISK.to_xml().replace('<target dev="vdb"/>',
                                             '<target dev="vdb" bus="virtio"/><address type="pci" slot="0x05"/>'))
    with Host(libvirt_module=lv) as host:
        assert host.attach_disk("vm1", DISK) is False
    domain.attachDeviceFlags.assert_not_called()


@pytest.mark.parametrize("occupant, words", [
    ("<disk type='file' device='disk'><source file='/x.img'/><target dev='vdb'/></disk>", "file disk /x.img"),
    (DiskDef(ImageSpec("rbd", "other"), "vdb", (Monitor("h"),)).to_xml(), "rbd disk rbd/other"),
    ("<disk type='network' device='disk'><source protocol='rbd' name='rbd/vm1-data:rbd_cache=true'/>"
     "<target dev='vdb'/></disk>", "rbd disk rbd/vm1-data:rbd_cache=true"),
])
def test_attach_disk_refuses_a_taken_target(lv, conn, occupant, words):
    domain = conn.lookupByName.return_value
    domain.XMLDesc.return_value = domain_xml(occupant)
    with Host(libvirt_module=lv) as host, pytest.raises(errors.LibvirtError, match=f"target vdb already holds {words}"):
        host.attach_disk("vm1", DISK)
    domain.attachDeviceFlags.assert_not_called()


def test_a_hostless_disk_on_the_same_image_already_is_the_disk(lv, conn):
    domain = conn.lookupByName.return_value
    domain.XMLDesc.return_value = domain_xml(
        "<disk type='network' device='disk'><source protocol='rbd' name='rbd/vm1-data'/><target dev='vdb'/></disk>")
    with Host(libvirt_module=lv) as host:
        assert host.attach_disk("vm1", DISK) is False
    domain.attachDeviceFlags.assert_not_called()


def test_attach_disk_to_a_missing_domain(lv, conn):
    conn.lookupByName.side_effect = missing(libvirt.VIR_ERR_NO_DOMAIN)
    with Host(libvirt_module=lv) as host, pytest.raises(errors.NotFoundError, match="domain vm9: not defined"):
        host.attach_disk("vm9", DISK)


def test_find_secret_by_reference_uses_the_ceph_usage(lv, conn):
    with Host(libvirt_module=lv) as host:
        host.find_secret(SecretRef(usage="ceph client.virt"))
    conn.secretLookupByUsage.assert_called_once_with(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, "ceph client.virt")


def test_nobody_listens_only_where_the_local_system_daemon_has_no_socket(tmp_path, monkeypatch):
    """A restore skips loading libvirt's binding (~12 MiB) only when no daemon could answer."""
    from virtrbd.libvirt import host
    sock = tmp_path / "libvirt-sock"
    monkeypatch.setattr(host, "SYSTEM_SOCKETS", (sock, tmp_path / "virtqemud-sock"))
    assert host.nobody_listens("qemu:///system")
    assert host.nobody_listens(f"qemu+unix:///system?socket={tmp_path / 'other'}")
    sock.touch()
    assert not host.nobody_listens("qemu:///system")
    assert host.nobody_listens(f"qemu+unix:///system?socket={tmp_path / 'other'}")
    assert not host.nobody_listens(f"qemu+unix:///system?socket={sock}")
    for elsewhere in ("qemu+ssh://hv2/system", "qemu:///session", "qemu+tcp://10.0.0.1/system", "test:///default"):
        assert not host.nobody_listens(elsewhere)
