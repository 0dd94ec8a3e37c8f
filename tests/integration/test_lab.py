"""The embedded lab itself: idempotent, tidy, and careful with the key."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from virtrbd.lab import CephSpec, Lab, processes
from virtrbd.probe import listening

from ..cli_helpers import virtrbd


def test_second_up_is_a_no_op(lab):
    before = [d.pid for d in lab.lab.daemons()]
    started = time.monotonic()
    assert lab.lab.up(with_libvirt=True) is False
    assert time.monotonic() - started < 3
    assert [d.pid for d in lab.lab.daemons()] == before


def test_cli_status_and_env(lab):
    status = virtrbd("lab", "status")
    assert status.code == 0 and ": up" in status.out
    env = virtrbd("lab", "env")
    assert f"export VIRTRBD_CONF={lab.conf_path}" in env.out


def test_keyrings_are_private_and_the_lab_folder_is_closed(lab):
    """Keyrings are 0600; the monitor's own store also holds keys, behind the 0700 lab folder; so does
    libvirt's secret store of host b (as /etc/libvirt/secrets does on every hypervisor): 0600 in 0700."""
    key = lab.key.reveal().encode()
    root = Path(lab.lab.root)
    assert stat.S_IMODE(root.stat().st_mode) & 0o077 == 0
    holders = []
    for path in root.rglob("*"):
        if path.is_file() and key in path.read_bytes():
            holders.append(path)
            if path.parent == root / "host-b" / "etc" / "secrets":
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is not 0600"
                assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, f"{path.parent} is not 0700"
            elif root / "ceph" / "mon" not in path.parents:
                assert path.name.endswith(".keyring"), f"{path} holds the key"
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is not 0600"
    assert any(p.name.endswith(".keyring") for p in holders)


def test_key_is_in_no_process_argv_or_environment(lab, storage):
    key = lab.key.reveal().encode()
    storage.list_images()  # a live client in this process
    sightings = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                if key in Path(entry.path, part).read_bytes():
                    sightings.append(f"{entry.name}/{part}")
            except OSError:
                pass
    assert sightings == []


def test_a_second_lab_comes_up_and_down_leaving_nothing(tmp_path):
    other = Lab(tmp_path / "lab2")
    spec = CephSpec(port=40300, mgr=False)
    assert other.up(spec) is True
    try:
        daemons = other.daemons()
        assert {d.name for d in daemons} == {"mon.a", "osd.0"}
        assert other.is_healthy()
    finally:
        stopped = other.down()
    assert sorted(stopped) == ["mon.a", "osd.0"]
    assert not any(processes.is_ours(d) for d in daemons)   # (a recycled PID is someone else's)
    for port in range(spec.port, spec.port + 100):
        assert not listening("127.0.0.1", port, timeout=0.2), f"port {port} still listening"
    assert not (tmp_path / "lab2").exists()


def test_up_refuses_a_busy_port(tmp_path, lab):
    import pytest

    from virtrbd.errors import LabError
    other = Lab(tmp_path / "lab3")
    with pytest.raises(LabError, match="already in use"):
        other.up(CephSpec(port=lab.config.ceph.monitors[0].port, mgr=False))
    other.down()


def test_status_of_a_broken_lab_names_its_problems(tmp_path):
    """A stopped OSD: the status names it and the client's failure, in one line each, no internal error."""
    from virtrbd.lab import faults
    other = Lab(tmp_path / "lab4")
    other.up(CephSpec(port=40400, mgr=False))
    try:
        faults.stop(other, "osd.0")
        status = virtrbd("lab", "status", env={"VIRTRBD_LAB_DIR": str(other.root)})
    finally:
        other.down()
    assert status.code == 1 and status.err == ""
    assert ": degraded" in status.out
    assert "  problem: osd.0 was stopped on purpose ('virtrbd lab start osd.0')" in status.out
    assert "  problem: client.virt cannot list pool rbd: listing pool rbd: timed out" in status.out
