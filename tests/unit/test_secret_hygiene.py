"""No object that holds or can reach the key shows it in repr(), str(), an exception or a log record."""

import logging

import pytest

from virtrbd import ceph, errors
from virtrbd.keyring import CephKey, read_key

from .conftest import KEY


def test_config_objects_hide_the_key(conf, fake_rados, fake_rbd):
    cluster = ceph.Cluster(conf, key=CephKey(KEY), rados_module=fake_rados, rbd_module=fake_rbd)
    for shown in (repr(conf), str(conf), repr(conf.ceph), repr(cluster), str(vars(cluster)),
                  repr(read_key(conf.ceph.keyring, "client.virt"))):
        assert KEY not in shown


def test_a_connection_logs_no_key(conf, fake_rados, fake_rbd, caplog):
    caplog.set_level(logging.DEBUG)
    with ceph.Cluster(conf, rados_module=fake_rados, rbd_module=fake_rbd):
        pass
    assert KEY not in caplog.text


def test_failed_connections_say_nothing_of_the_key(conf, fake_rados, fake_rbd, mocker, caplog):
    caplog.set_level(logging.DEBUG)
    mocker.patch.object(ceph.cluster, "reachable_monitor", return_value=None)
    for failure in (fake_rados.TimedOut("t", errno=110), fake_rados.PermissionDeniedError("p", errno=13),
                    fake_rados.InvalidArgumentError("i", errno=22)):
        fake_rados.Rados.return_value.connect.side_effect = failure
        with pytest.raises(errors.VirtrbdError) as info:
            ceph.Cluster(conf, rados_module=fake_rados, rbd_module=fake_rbd).connect()
        assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert KEY not in caplog.text
