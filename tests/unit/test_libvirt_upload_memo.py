"""A restore remembers, per run of the local libvirtd, that it cannot upload: the next restores skip libvirt."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from virtrbd.backup import via_libvirt
from virtrbd.libvirt import host

STAT = "{pid} (libvirtd) S 1 {pid} {pid} 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 18 0 {start} 1 1 1 1 1 1"


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    """A fake /proc and PID file; ``run(pid, start, comm)`` makes that process the running libvirtd."""
    proc = tmp_path / "proc"
    pidfile = tmp_path / "libvirtd.pid"
    monkeypatch.setattr(host, "PROC", proc)
    monkeypatch.setattr(host, "LIBVIRTD_PIDFILE", pidfile)

    def run(pid: int, start: int, comm: str = "libvirtd") -> None:
        (proc / str(pid)).mkdir(parents=True, exist_ok=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "stat").write_text(STAT.format(pid=pid, start=start))
        pidfile.write_text(f"{pid}\n")
    return run


@pytest.fixture
def memo(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(via_libvirt, "MEMO", tmp_path / "run" / "virtrbd" / "libvirt-upload.json")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return via_libvirt.MEMO


def test_the_daemon_run_is_its_pid_and_start_from_its_pid_file(daemon):
    daemon(4242, 987654)
    assert host.system_daemon_run("qemu:///system") == "4242:987654"
    assert host.system_daemon_run("qemu+unix:///system") == "4242:987654"
    for other in ("qemu+unix:///system?socket=/run/b/libvirt-sock", "qemu+tcp://10.0.0.2/system",
                  "qemu:///session", "test:///default"):
        assert host.system_daemon_run(other) is None


def test_a_pid_file_naming_no_libvirtd_names_no_run(daemon):
    assert host.system_daemon_run("qemu:///system") is None            # no PID file
    daemon(4242, 987654, comm="bash")                                   # a stale file, the PID reused
    assert host.system_daemon_run("qemu:///system") is None


def ask(answer: bool, uri: str = "qemu:///system", mocker=None):
    target = SimpleNamespace(host=SimpleNamespace(uri=uri), pool="rbd")
    mocker.patch("virtrbd.libvirt.streams.supports_volume_upload", return_value=answer)
    return via_libvirt.can_upload(target)


def test_a_no_is_remembered_for_that_run_only(daemon, memo, mocker):
    daemon(4242, 987654)
    assert not via_libvirt.known_unable("qemu:///system")
    assert ask(False, mocker=mocker) is False
    assert via_libvirt.known_unable("qemu:///system")
    assert memo.stat().st_mode & 0o777 == 0o600 and memo.parent.stat().st_mode & 0o777 == 0o700
    daemon(4242, 999999)                    # restarted (with the patched backend, say): asked again
    assert not via_libvirt.known_unable("qemu:///system")
    assert ask(True, mocker=mocker) is True
    assert not via_libvirt.known_unable("qemu:///system")


def test_nothing_is_remembered_by_others_than_root_or_for_other_daemons(daemon, memo, mocker, monkeypatch):
    daemon(4242, 987654)
    ask(False, uri="qemu+tcp://10.0.0.2/system", mocker=mocker)
    assert not memo.exists()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    ask(False, mocker=mocker)
    assert not memo.exists() and not via_libvirt.known_unable("qemu:///system")


def test_a_damaged_memo_means_asking_again(daemon, memo, mocker):
    daemon(4242, 987654)
    memo.parent.mkdir()
    memo.write_text("{not json")
    assert not via_libvirt.known_unable("qemu:///system")
    ask(False, mocker=mocker)
    assert via_libvirt.known_unable("qemu:///system")


def test_a_restore_skips_libvirt_where_its_daemon_said_no(mocker, monkeypatch):
    """Neither libvirt's binding nor a connection: the restore goes through librbd at once."""
    from virtrbd import backup
    monkeypatch.setattr(via_libvirt, "known_unable", lambda uri: True)
    monkeypatch.setattr(host, "nobody_listens", lambda uri: False)
    upload_target = mocker.patch("virtrbd.libvirt.policy.upload_target")
    run_restore = mocker.patch.object(backup, "run_restore", return_value="done")
    storage = SimpleNamespace(config=SimpleNamespace(libvirt=SimpleNamespace(uri="qemu:///system")),
                              cluster="cluster", spec=lambda target, snapshot: target)
    plan = mocker.Mock(spec=backup.RestorePlan)
    assert backup.restore(storage, plan, "rbd/x") == "done"
    upload_target.assert_not_called()
    assert run_restore.call_args.kwargs["libvirt"] is None
