"""The policy above the XML models: which secret, pool and disks virtrbd.conf asks for, and
applying them idempotently through a mocked libvirt (pytest-mock) and fake librbd."""

from __future__ import annotations

import base64
import dataclasses
import errno

import libvirt
import pytest

from virtrbd import ceph, errors
from virtrbd.libvirt import policy
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

MONITORS = (Monitor("192.0.2.10", 3300), Monitor("2001:db8::1", 3300))


def with_uuid(conf):
    return dataclasses.replace(conf, libvirt=dataclasses.replace(conf.libvirt, secret_uuid=UUID, pool="ceph-vms"))


# --- the documents ------------------------------------------------------------------------------

def test_the_secret_is_named_after_the_libvirt_pool_and_the_user(conf):
    assert policy.secret_def(conf).usage_name == "rbd client.virt"
    assert policy.secret_def(with_uuid(conf)) == SecretDef(
        "ceph-vms client.virt", uuid=UUID, description="cephx key of client.virt for libvirt pool ceph-vms")


def test_the_secret_is_referenced_by_uuid_when_configured_else_by_usage(conf):
    assert policy.secret_ref(conf) == SecretRef(usage="rbd client.virt")
    assert policy.secret_ref(with_uuid(conf)) == SecretRef(uuid=UUID)


def test_the_pool_has_every_monitor_the_user_and_the_timeouts(conf):
    assert policy.pool_def(with_uuid(conf)) == PoolDef(
        "ceph-vms", "rbd", MONITORS, "virt", SecretRef(uuid=UUID),
        config_opts=(("client_mount_timeout", "4"), ("rados_mon_op_timeout", "10"), ("rados_osd_op_timeout", "10")))


def test_a_disk_has_every_monitor_and_the_configs_auth(conf):
    disk = policy.disk_def(conf, ImageSpec("rbd", "vm1"), "vda", cache="none")
    assert disk == DiskDef(ImageSpec("rbd", "vm1"), "vda", MONITORS, "virt", SecretRef(usage="rbd client.virt"),
                           cache="none")


def test_a_disk_on_a_snapshot_is_read_only(conf):
    assert policy.disk_def(conf, ImageSpec("rbd", "golden", "base"), "vda").read_only


def test_a_disk_virtrbd_builds_names_its_monitors(conf):
    hostless = dataclasses.replace(conf, ceph=dataclasses.replace(conf.ceph, monitors=()))
    with pytest.raises(ValueError, match="a disk needs at least one monitor"):
        policy.disk_def(hostless, ImageSpec("rbd", "vm1"), "vda")


def test_volumes_live_in_the_configs_pool_only(conf):
    assert policy.volume_pool(with_uuid(conf), ImageSpec("rbd", "x")) == "ceph-vms"
    with pytest.raises(errors.UsageError, match="holds the images of Ceph pool rbd only"):
        policy.volume_pool(conf, ImageSpec("other", "x"))


# --- the secret ------------------------------------------------------------------------------------

def test_a_new_secret_is_defined_and_given_the_key_through_the_api(lv, conn, conf):
    conn.secretLookupByUsage.side_effect = missing(libvirt.VIR_ERR_NO_SECRET)
    with Host(libvirt_module=lv) as host:
        applied = policy.ensure_secret(host, conf)
    assert applied.actions == ("defined", "value set")
    xml = conn.secretDefineXML.call_args.args[0]
    assert SecretDef.from_xml(xml).usage_name == "rbd client.virt" and KEY not in xml
    conn.secretDefineXML.return_value.setValue.assert_called_once_with(base64.b64decode(KEY), 0)
    assert KEY not in str(applied)


def test_an_existing_secret_is_unchanged_and_gets_the_key_again(lv, conn, conf):
    with Host(libvirt_module=lv) as host:
        applied = policy.ensure_secret(host, with_uuid(conf))
    assert not applied.changed
    assert str(applied) == f"secret {UUID}: unchanged; value set again from [ceph] keyring"
    conn.secretDefineXML.assert_not_called()
    conn.secretLookupByUUIDString.return_value.setValue.assert_called_once_with(base64.b64decode(KEY), 0)


def test_without_a_keyring_a_missing_secret_cannot_be_made(lv, conn, conf):
    no_keyring = dataclasses.replace(with_uuid(conf), ceph=dataclasses.replace(conf.ceph, keyring=None))
    conn.secretLookupByUUIDString.side_effect = missing(libvirt.VIR_ERR_NO_SECRET)
    with Host(libvirt_module=lv) as host, pytest.raises(errors.ConfigError, match=r"\[ceph\] keyring: needed"):
        policy.ensure_secret(host, no_keyring)
    conn.secretDefineXML.assert_not_called()


# --- the pool -----------------------------------------------------------------------------------------

def test_a_new_pool_is_defined_started_and_autostarted(lv, conn, conf):
    conn.storagePoolLookupByName.side_effect = missing(libvirt.VIR_ERR_NO_STORAGE_POOL)
    defined = conn.storagePoolDefineXML.return_value
    defined.isActive.return_value = 0
    defined.autostart.return_value = 0
    with Host(libvirt_module=lv) as host:
        applied = policy.ensure_pool(host, with_uuid(conf))
    assert applied.actions == ("defined", "started", "autostart on")
    assert PoolDef.from_xml(conn.storagePoolDefineXML.call_args.args[0]) == policy.pool_def(with_uuid(conf))
    defined.create.assert_called_once_with(0)
    defined.setAutostart.assert_called_once_with(1)


def test_a_running_pool_is_unchanged(lv, conn, conf):
    config = with_uuid(conf)
    pool = conn.storagePoolLookupByName.return_value
    pool.XMLDesc.return_value = policy.pool_def(config).to_xml()
    pool.isActive.return_value = 1
    pool.autostart.return_value = 1
    with Host(libvirt_module=lv) as host:
        assert str(policy.ensure_pool(host, config)) == "storage pool ceph-vms: unchanged"
    conn.storagePoolDefineXML.assert_not_called()
    pool.create.assert_not_called()


def test_a_pool_whose_secret_is_missing_is_not_defined(lv, conn, conf):
    conn.secretLookupByUUIDString.side_effect = missing(libvirt.VIR_ERR_NO_SECRET)
    with Host(libvirt_module=lv) as host, pytest.raises(errors.LibvirtError, match="which is not defined"):
        policy.ensure_pool(host, with_uuid(conf))
    conn.storagePoolDefineXML.assert_not_called()


def test_ensure_libvirt_objects_does_secret_then_pool(lv, conn, conf):
    config = with_uuid(conf)
    pool = conn.storagePoolLookupByName.return_value
    pool.XMLDesc.return_value = policy.pool_def(config).to_xml()
    applied = policy.ensure_libvirt_objects(config, libvirt_module=lv)
    assert [a.what for a in applied] == [f"secret {UUID}", "storage pool ceph-vms"]
    conn.close.assert_called_once_with()


# --- volumes -----------------------------------------------------------------------------------------

@pytest.fixture
def cluster(conf, fake_rados, fake_rbd):
    fake_rbd.Image.return_value.size.return_value = 1 << 20   # every image exists, 1 MiB, unless a test says
    with ceph.Cluster(conf, rados_module=fake_rados, rbd_module=fake_rbd) as cluster:
        yield cluster


def image_missing(fake_rbd):
    fake_rbd.Image.side_effect = fake_rbd.ImageNotFound("no such image", errno=errno.ENOENT)


def test_find_volume_opens_the_image_read_only_and_closes_it(cluster, fake_rbd):
    fake_rbd.Image.return_value.size.return_value = 8 << 20
    assert policy.find_volume(cluster, ImageSpec("rbd", "vm1")) == VolumeDef("vm1", 8 << 20)
    assert fake_rbd.Image.call_args.args[1] == "vm1" and fake_rbd.Image.call_args.kwargs["read_only"] is True
    fake_rbd.Image.return_value.close.assert_called_once_with()


def test_find_volume_of_a_missing_image_is_none(cluster, fake_rbd):
    image_missing(fake_rbd)
    assert policy.find_volume(cluster, ImageSpec("rbd", "vm1")) is None


def test_ensure_volume_creates_a_missing_image_through_libvirt(lv, conn, conf, cluster, fake_rbd):
    image_missing(fake_rbd)
    with Host(libvirt_module=lv) as host:
        applied = policy.ensure_volume(host, cluster, conf, VolumeDef("vm1", 1 << 30))
    assert applied.actions == ("created",)
    pool = conn.storagePoolLookupByName.return_value
    assert VolumeDef.from_xml(pool.createXML.call_args.args[0]) == VolumeDef("vm1", 1 << 30)


def test_ensure_volume_of_an_existing_image_changes_nothing(lv, conn, conf, cluster, fake_rbd):
    fake_rbd.Image.return_value.size.return_value = 1 << 30
    with Host(libvirt_module=lv) as host:
        assert not policy.ensure_volume(host, cluster, conf, VolumeDef("vm1", 1 << 30)).changed
    conn.storagePoolLookupByName.return_value.createXML.assert_not_called()


def test_ensure_volume_does_not_resize_behind_the_users_back(lv, conn, conf, cluster, fake_rbd):
    fake_rbd.Image.return_value.size.return_value = 1 << 20
    with Host(libvirt_module=lv) as host, pytest.raises(errors.AlreadyExistsError, match="exists with 1048576 bytes"):
        policy.ensure_volume(host, cluster, conf, VolumeDef("vm1", 1 << 30))
    conn.storagePoolLookupByName.return_value.createXML.assert_not_called()


def test_libvirt_volume_of_a_missing_image_skips_libvirt(lv, conn, conf, cluster, fake_rbd):
    image_missing(fake_rbd)
    with Host(libvirt_module=lv) as host:
        assert policy.libvirt_volume(host, cluster, conf, "vm1") is None
    conn.storagePoolLookupByName.assert_not_called()


def test_libvirt_volume_it_knows_needs_no_refresh(lv, conn, conf, cluster):
    pool = conn.storagePoolLookupByName.return_value
    with Host(libvirt_module=lv) as host:
        assert policy.libvirt_volume(host, cluster, conf, "vm1") is pool.storageVolLookupByName.return_value
    pool.refresh.assert_not_called()


def test_libvirt_volume_made_behind_its_back_costs_one_refresh(lv, conn, conf, cluster):
    pool = conn.storagePoolLookupByName.return_value
    found = object()
    pool.storageVolLookupByName.side_effect = [missing(libvirt.VIR_ERR_NO_STORAGE_VOL), found]
    with Host(libvirt_module=lv) as host:
        assert policy.libvirt_volume(host, cluster, conf, "vm1") is found
    pool.refresh.assert_called_once_with(0)


# --- disks ------------------------------------------------------------------------------------------------

def test_attach_disk_reports_what_it_did(lv, conn, conf):
    conn.lookupByName.return_value.XMLDesc.return_value = "<domain><devices/></domain>"
    disk = policy.disk_def(conf, ImageSpec("rbd", "vm1"), "vdb")
    with Host(libvirt_module=lv) as host:
        assert str(policy.attach_disk(host, conf, "vm1", disk)) == "domain vm1: disk vdb (rbd/vm1): attached"
