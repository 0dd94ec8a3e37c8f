"""The lab's libvirtd sees the cluster through the rbd pool and secret the lab defined."""

from __future__ import annotations

import libvirt
import pytest

from virtrbd.libvirt.host import Host
from virtrbd.xml.pool import PoolDef
from virtrbd.xml.secret import SecretDef


def test_libvirt_pool_lists_an_image_created_through_librbd(lab, storage, image_name):
    storage.create_image(image_name, 40 << 20)
    with Host(lab.config.libvirt.uri) as host:
        pool = host.find_pool(lab.libvirt_pool)
        assert pool.isActive()
        pool.refresh(0)
        volume = pool.storageVolLookupByName(image_name)
        _type, capacity, _allocation = volume.info()
        assert capacity == 40 << 20
        assert volume.path() == f"rbd/{image_name}"


def test_lab_pool_and_secret_are_virtrbd_documents(lab):
    with Host(lab.config.libvirt.uri) as host:
        pool = PoolDef.from_xml(host.find_pool(lab.libvirt_pool).XMLDesc(0))
        assert pool.source_name == "rbd"
        assert pool.secret.uuid == lab.config.libvirt.secret_uuid
        assert [str(m) for m in pool.monitors] == [str(lab.config.ceph.monitors[0])]
        secret = host.conn.secretLookupByUUIDString(lab.config.libvirt.secret_uuid)
        assert SecretDef.from_xml(secret.XMLDesc(0)).uuid == lab.config.libvirt.secret_uuid
        assert lab.key.reveal() not in secret.XMLDesc(0)


def test_the_lab_secret_is_private(lab):
    with Host(lab.config.libvirt.uri) as host:
        secret = host.conn.secretLookupByUUIDString(lab.config.libvirt.secret_uuid)
        assert "private='yes'" in secret.XMLDesc(0).replace('"', "'")
        assert secret.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_CEPH
        with pytest.raises(libvirt.libvirtError, match="private"):
            secret.value(0)
