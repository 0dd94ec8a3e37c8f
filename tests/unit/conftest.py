"""Fakes for unit tests: built from the real bindings' surface so they cannot drift from it."""

from __future__ import annotations

import types
from pathlib import Path
from unittest import mock

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
