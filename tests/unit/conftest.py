"""Fakes for unit tests: built from the real bindings' surface so they cannot drift from it."""

from __future__ import annotations

import types
from pathlib import Path
from unittest import mock

import libvirt
import pytest
import rados
import rbd

from virtrbd import config

KEY = "AQBKpEZnAAAAABAAgV2bCDk7cO2VXy3SEf30lA=="


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "ceph.client.virt.keyring"
    path.write_text(f"[client.virt]\n\tkey = {KEY}\n\tcaps mon = \"profile rbd\"\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def conf(tmp_path: Path, keyring: Path) -> config.Config:
    path = tmp_path / "virtrbd.conf"
    path.write_text(f"[ceph]\nmonitors = 192.0.2.10:3300, [2001:db8::1]:3300\nclient_id = virt\n"
                    f"keyring = {keyring}\npool = rbd\nclient_mount_timeout = 4\n")
    return config.load(path)


@pytest.fixture
def fake_rados():
    """A stand-in for the rados module: autospecced Rados, the real exception classes."""
    module = types.SimpleNamespace(**{name: getattr(rados, name) for name in dir(rados) if name[0].isupper()})
    module.Rados = mock.create_autospec(rados.Rados)
    return module


@pytest.fixture
def fake_rbd():
    module = types.SimpleNamespace(**{name: getattr(rbd, name) for name in dir(rbd) if name[0].isupper()})
    module.RBD = mock.create_autospec(rbd.RBD)
    module.Image = mock.create_autospec(rbd.Image)
    return module


@pytest.fixture
def lv(mocker):
    """A stand-in for the libvirt module: its constants and error class, and a connection, a pool, a volume, a
    domain, a secret and a stream autospecced from the real binding's classes, so that a misspelt or missing
    libvirt call fails the test.  ``lv.conn``, ``lv.pool``, ``lv.vol``, ``lv.stream`` are what it hands out."""
    module = types.SimpleNamespace(**{n: getattr(libvirt, n) for n in dir(libvirt) if n.isupper()})
    module.libvirtError = libvirt.libvirtError
    conn = mocker.create_autospec(libvirt.virConnect, instance=True)
    module.open = mocker.Mock(return_value=conn)
    pool = mocker.create_autospec(libvirt.virStoragePool, instance=True)
    conn.storagePoolLookupByName.return_value = pool
    vol = mocker.create_autospec(libvirt.virStorageVol, instance=True)
    pool.storageVolLookupByName.return_value = vol
    conn.lookupByName.return_value = mocker.create_autospec(libvirt.virDomain, instance=True)
    conn.secretLookupByUUIDString.return_value = mocker.create_autospec(libvirt.virSecret, instance=True)
    stream = mocker.create_autospec(libvirt.virStream, instance=True)
    conn.newStream.return_value = stream
    module.conn, module.pool, module.vol, module.stream = conn, pool, vol, stream
    return module


@pytest.fixture
def conn(lv):
    """The connection the fake libvirt module opens."""
    return lv.conn
