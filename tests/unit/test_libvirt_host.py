"""The libvirt side, against a mocked libvirt module (pytest-mock)."""

import base64
import types

import libvirt
import pytest

from virtrbd import errors
from virtrbd.keyring import CephKey
from virtrbd.libvirt_host import Host
from virtrbd.monitor import Monitor
from virtrbd.xml.common import SecretRef
from virtrbd.xml.pool import PoolDef
from virtrbd.xml.secret import SecretDef

from .conftest import KEY

UUID = "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"


def missing(code):
    exc = libvirt.libvirtError("missing")
    exc.err = (code, 0, "no such object", 0, None, None, None, 0, 0)
    return exc


@pytest.fixture
def lv(mocker):
    module = types.SimpleNamespace(**{n: getattr(libvirt, n) for n in dir(libvirt) if n.isupper()})
    module.libvirtError = libvirt.libvirtError
    module.open = mocker.Mock()
    return module


@pytest.fixture
def conn(lv):
    return lv.open.return_value


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
