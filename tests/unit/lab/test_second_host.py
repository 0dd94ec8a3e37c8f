"""Host b of the lab without starting it: its folders, its settings, its addresses, and the refusals."""

from __future__ import annotations

import pytest

from virtrbd.errors import LabError
from virtrbd.lab import Lab, processes, second_host
from virtrbd.lab.second_host import SecondHost


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """Stand-ins for the machine's libvirt folders, as host a has them."""
    etc = tmp_path / "machine" / "etc-libvirt"
    for path, text in {"libvirtd.conf": "#listen_tls = 0\n", "qemu.conf": "#user = ''\n",
                       "secrets/0f06ada2.xml": "<secret/>", "secrets/0f06ada2.base64": "a2V5",
                       "storage/virtrbd-lab.xml": "<pool/>", "storage/autostart/virtrbd-lab.xml": "<pool/>",
                       "qemu/vm1.xml": "<domain/>", "qemu/networks/default.xml": "<network/>",
                       "qemu/networks/autostart/default.xml": "<network/>",
                       "hooks/qemu.d/other": "#!/bin/sh\n"}.items():
        (etc / path).parent.mkdir(parents=True, exist_ok=True)
        (etc / path).write_text(text)
    lib = tmp_path / "machine" / "var-lib-libvirt"
    (lib / "qemu" / "channel").mkdir(parents=True)
    cache = tmp_path / "machine" / "var-cache-libvirt"
    (cache / "qemu" / "capabilities").mkdir(parents=True)
    folders = dict(second_host.FOLDERS, etc=etc, lib=lib, cache=cache)
    monkeypatch.setattr(second_host, "FOLDERS", folders)
    return folders


def test_b_gets_copies_of_a_s_folders_without_a_s_objects(tmp_path, machine):
    host = SecondHost(tmp_path / "lab", 40100)
    host_uuid = host.prepare()
    etc = host.dir / "etc"
    assert (etc / "hooks" / "qemu.d" / "other").exists()                   # a's other hooks run on b too
    assert (etc / "qemu" / "networks" / "default.xml").exists()
    for gone in ("secrets/0f06ada2.xml", "secrets/0f06ada2.base64", "storage/virtrbd-lab.xml",
                 "storage/autostart/virtrbd-lab.xml", "qemu/vm1.xml", "qemu/networks/autostart/default.xml"):
        assert not (etc / gone).exists(), gone                               # b's objects are its own
    assert (host.dir / "cache" / "qemu" / "capabilities").is_dir()          # no 12 s QEMU probe
    assert (host.dir / "lib" / "qemu" / "channel").is_dir()
    assert (host.dir / "log" / "qemu").is_dir() and (host.dir / "run").is_dir() and (host.dir / "a-run").is_dir()
    assert (machine["etc"] / "secrets" / "0f06ada2.xml").exists()          # a's own are untouched
    settings = (etc / "libvirtd.conf").read_text()
    assert f'host_uuid = "{host_uuid}"' in settings
    assert 'listen_addr = "127.0.0.1"' in settings and 'tcp_port = "40190"' in settings
    assert "listen_tcp = 1" in settings and "listen_tls = 0" in settings
    assert "cgroup_controllers = [ ]" in (etc / "qemu.conf").read_text()


def test_preparing_again_starts_from_a_clean_copy(tmp_path, machine):
    host = SecondHost(tmp_path / "lab", 40100)
    first = host.prepare()
    (host.dir / "etc" / "stale").write_text("x")
    assert host.prepare() != first                                           # a new host UUID each time
    assert not (host.dir / "etc" / "stale").exists()
    assert (host.dir / "etc" / "libvirtd.conf").read_text().count("host_uuid") == 1


def test_addresses(tmp_path):
    host = SecondHost(tmp_path / "lab", 40300)
    assert host.uri == f"qemu:///system?socket={tmp_path}/lab/host-b/run/libvirt-sock"
    assert host.tcp_uri == "qemu+tcp://127.0.0.1:40390/system"
    assert host.a_uri == f"qemu+unix:///system?socket={tmp_path}/lab/host-b/a-run/libvirt-sock"
    assert host.conf_file == tmp_path / "lab" / "host-b" / "virtrbd.conf"


def test_b_s_libvirtd_joins_b_s_namespace_keeping_its_root(tmp_path, mocker):
    """Entering a mount namespace moves a process to the namespace's own root: in a chroot (a package's test
    root, a container image being built) b's libvirtd would look for its files outside it.  ``-r -w``
    keep the root and working folder of b's virtlogd, which was started where the lab runs."""
    started = []

    def start(name, argv, log_path, marker, env=None):
        started.append(argv)
        return processes.Daemon(name, 4000 + len(started), marker)

    mocker.patch.object(second_host.processes, "start", side_effect=start)
    mocker.patch.object(second_host, "wait_socket")
    SecondHost(tmp_path / "lab", 40100).start(lambda daemon: None, env={})
    virtlogd, libvirtd = started
    assert virtlogd[:5] == ["unshare", "-m", "--propagation", "private", "--"]
    assert libvirtd[:7] == ["nsenter", "-t", "4001", "-m", "-r", "-w", "--"]
    assert libvirtd[7] == "libvirtd"


@pytest.mark.parametrize("hosts", [0, 3, -1])
def test_a_lab_has_one_or_two_hosts(tmp_path, hosts):
    lab = Lab(tmp_path / "lab")
    with pytest.raises(LabError, match="1 to 2 hypervisors"):
        lab.up(hosts=hosts)
    assert not (tmp_path / "lab").exists()                                   # refused before anything


def test_a_lab_without_libvirt_has_no_hosts_to_run_guests_on(tmp_path):
    with pytest.raises(LabError, match="no lab with libvirt"):
        Lab(tmp_path / "lab").guests("b")
