"""Which restores may take libvirt's volume upload: only into the libvirt pool that is [ceph] pool."""

from __future__ import annotations

import libvirt
import pytest

from virtrbd.libvirt import policy

POOL_XML = """<pool type='rbd'><name>rbd</name>
  <source><name>{ceph_pool}</name><host name='{host}'{port}/></source></pool>"""


@pytest.fixture
def libvirt_pool(mocker):
    """libvirtd answering, with an active pool named as the config's [libvirt] pool; its XML set per test."""
    host = mocker.patch("virtrbd.libvirt.policy.Host").return_value
    host.libvirt.libvirtError = libvirt.libvirtError
    pool = host.find_pool.return_value
    pool.isActive.return_value = True
    return pool


@pytest.mark.parametrize("ceph_pool, host, port, usable", [
    ("rbd", "192.0.2.10", 3300, True),           # [ceph] pool on one of [ceph] monitors (192.0.2.10:3300, ...)
    ("rbd", "2001:db8::1", 3300, True),
    ("rbd", "2001:0db8:0000::1", 3300, True),    # the same address, written longer
    ("rbd", "192.0.2.10", None, True),           # no port: Ceph's defaults, 3300 among them
    ("images", "192.0.2.10", 3300, False),       # another Ceph pool of the same cluster
    ("rbd", "198.51.100.7", 3300, False),        # a pool of the same name in another cluster
    ("rbd", "192.0.2.10", 6790, False),          # ... or in another cluster on the same host
])
def test_only_the_libvirt_pool_of_our_ceph_pool_takes_uploads(conf, libvirt_pool, ceph_pool, host, port, usable):
    libvirt_pool.XMLDesc.return_value = POOL_XML.format(ceph_pool=ceph_pool, host=host,
                                                        port=f" port='{port}'" if port else "")
    with policy.upload_target(conf) as target:
        assert (target is not None) is usable
        if usable:
            assert (target.pool, target.ceph_pool) == ("rbd", "rbd")


def test_a_pool_whose_xml_cannot_be_read_means_librbd(conf, libvirt_pool):
    libvirt_pool.XMLDesc.return_value = "<pool type='dir'/>"
    with policy.upload_target(conf) as target:
        assert target is None
