"""Connecting to the lab's real cluster with the restricted hypervisor key, and failing well."""

from __future__ import annotations

import errno
import json
import socket
import time

import pytest

from virtrbd import Storage, errors
from virtrbd.ceph import Cluster
from virtrbd.lab.keys import generate_key, keyring_text, write_private

from ..cli_helpers import assert_one_line_error, virtrbd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_restricted_client_connects(storage, lab):
    info = storage.check()
    assert info.user == "client.virt"
    assert info.fsid
    assert info.pool == "rbd"


def test_create_resize_and_remove_an_image(storage, image_name):
    storage.create_image(image_name, 64 << 20)
    assert image_name in storage.list_images()
    storage.resize_image(image_name, 128 << 20)
    assert storage.image_size(image_name) == 128 << 20
    with pytest.raises(errors.UsageError, match="allow_shrink"):
        storage.resize_image(image_name, 32 << 20)
    storage.resize_image(image_name, 32 << 20, allow_shrink=True)
    assert storage.image_size(image_name) == 32 << 20
    storage.remove_image(image_name)
    assert not storage.image_exists(image_name)


def test_missing_image_names_the_image(storage):
    with pytest.raises(errors.NotFoundError, match="rbd/no-such-image: does not exist"):
        storage.resize_image("rbd/no-such-image", 1 << 20)


def test_creating_an_existing_image_says_so(storage, image_name):
    storage.create_image(image_name, 1 << 20)
    with pytest.raises(errors.AlreadyExistsError, match=f"rbd/{image_name}: already exists"):
        storage.create_image(image_name, 1 << 20)


def test_restricted_client_cannot_create_pools(storage):
    ret, _out, _err = storage.cluster.handle.mon_command(
        json.dumps({"prefix": "osd pool create", "pool": "forbidden", "pg_num": 8}), b"", timeout=10)
    assert ret == -errno.EACCES


def test_unknown_pool(storage):
    with pytest.raises(errors.NotFoundError, match="pool nopool: does not exist"):
        storage.list_images("nopool")


def test_wrong_key_fails_within_the_timeout(lab):
    conf = lab.with_ceph(client_mount_timeout=3)
    started = time.monotonic()
    with pytest.raises(errors.AuthenticationError, match="wrong key"):
        Cluster(conf, key=generate_key()).connect()
    assert time.monotonic() - started < 3 + 1.5


def test_unreachable_monitor_fails_within_the_timeout(lab):
    from virtrbd.monitor import Monitor
    conf = lab.with_ceph(client_mount_timeout=2, monitors=(Monitor("127.0.0.1", free_port()),))
    started = time.monotonic()
    with pytest.raises(errors.ConnectionFailedError, match="no monitor reachable"):
        Storage(conf).__enter__()
    assert time.monotonic() - started < 2 + 1.5


def test_cli_wrong_key_is_one_line_exit_1(lab, tmp_path):
    keyring = tmp_path / "wrong.keyring"
    write_private(keyring, keyring_text({"client.virt": (generate_key(), {})}))
    conf = tmp_path / "wrong.conf"
    conf.write_text(f"[ceph]\nmonitors = {lab.config.ceph.monitors[0]}\nclient_id = virt\n"
                    f"keyring = {keyring}\nclient_mount_timeout = 3\n")
    started = time.monotonic()
    result = virtrbd("--config", str(conf), "config", "check")
    assert time.monotonic() - started < 3 + 3
    assert_one_line_error(result, 1, "did not accept client.virt", "wrong key")


def test_cli_unreachable_monitor_is_one_line_exit_1(lab, tmp_path):
    conf = tmp_path / "unreachable.conf"
    conf.write_text(f"[ceph]\nmonitors = 127.0.0.1:{free_port()}\nclient_id = virt\n"
                    f"keyring = {lab.config.ceph.keyring}\nclient_mount_timeout = 2\n")
    result = virtrbd("--config", str(conf), "ls")
    assert_one_line_error(result, 1, "no monitor reachable", "within 2 s")


def test_cli_round_trip(lab, image_name):
    assert virtrbd("create", f"rbd/{image_name}", "--size", "8M", env=lab.env).code == 0
    listed = virtrbd("ls", "--json", env=lab.env)
    assert image_name in json.loads(listed.out)
    assert virtrbd("resize", image_name, "--size", "16M", env=lab.env).code == 0
    check = virtrbd("config", "check", "--json", env=lab.env)
    assert check.code == 0 and json.loads(check.out)["user"] == "client.virt"
