"""Switching the lab's libvirtd between Debian's rbd backend and the patched one (daemons faked)."""

import pytest

from virtrbd.errors import LabError
from virtrbd.lab import Lab, libvirt_side, processes
from virtrbd.lab import lab as lab_module


class FakeHost:
    """libvirtd processes as the lab sees them: which PIDs live and which rbd module each mapped."""

    def __init__(self, lab: Lab, system_dir):
        self.lab = lab
        self.system_dir = system_dir
        self.alive: set[int] = set()
        self.mapped: dict[int, str] = {}
        self.started: list[dict | None] = []
        self.stopped: list[int] = []
        self.defined = 0
        self.next_pid = 5000

    def run(self, pid: int, module: str) -> processes.Daemon:
        self.alive.add(pid)
        self.mapped[pid] = module
        return processes.Daemon("libvirtd", pid, "libvirtd")

    def start_daemon(self, name, log_dir, env_extra=None):
        assert name == "libvirtd"
        self.started.append(env_extra)
        self.next_pid += 1
        folder = (env_extra or {}).get(libvirt_side.BACKEND_DIR_ENV)
        module = f"{folder or self.system_dir}/{libvirt_side.RBD_MODULE}"
        return self.run(self.next_pid, module)

    def stop(self, daemons, sig, wait):
        for daemon in daemons:
            self.stopped.append(daemon.pid)
            self.alive.discard(daemon.pid)
        return []


@pytest.fixture
def host(tmp_path, monkeypatch):
    system_dir = tmp_path / "system"
    system_dir.mkdir()
    for kind in ("fs", "rbd"):
        (system_dir / f"libvirt_storage_backend_{kind}.so").write_bytes(kind.encode())
    built = tmp_path / "built.so"
    built.write_bytes(b"patched build 1")
    lab = Lab(tmp_path / "lab")
    lab.root.mkdir()
    fake = FakeHost(lab, system_dir)
    fake.built = built
    monkeypatch.setattr(libvirt_side, "SYSTEM_BACKEND_DIR", system_dir)
    monkeypatch.setenv(libvirt_side.BUILT_MODULE_ENV, str(built))
    monkeypatch.setattr(processes, "is_ours", lambda d: d.pid in fake.alive)
    monkeypatch.setattr(processes, "stop", fake.stop)
    monkeypatch.setattr(libvirt_side, "start_daemon", fake.start_daemon)
    monkeypatch.setattr(libvirt_side, "loaded_rbd_module", lambda pid: fake.mapped.get(pid) if pid in fake.alive
                        else None)
    monkeypatch.setattr(libvirt_side, "define_objects", lambda *_: setattr(fake, "defined", fake.defined + 1))
    monkeypatch.setattr(lab_module, "_foreign_libvirtd_pid", lambda: fake.foreign)
    fake.foreign = None
    return fake


def lab_state(host, pid=4000) -> dict:
    daemon = host.run(pid, f"{host.system_dir}/{libvirt_side.RBD_MODULE}")
    return {"daemons": [daemon.to_dict()], "libvirt": {"pool": "virtrbd-lab"}}


def test_a_lab_libvirtd_on_debians_module_is_restarted_with_the_patched_folder(host):
    state = lab_state(host)
    assert host.lab._ensure_rbd_backend(state, True) is True
    assert host.stopped == [4000]
    assert host.started == [{libvirt_side.BACKEND_DIR_ENV: str(host.lab.backend_dir)}]
    assert [d["pid"] for d in state["daemons"]] == [5001]           # the new libvirtd is the one recorded
    assert state["libvirtd"]["rbd_backend"] == "patched"
    assert state["libvirtd"]["sha256"] == libvirt_side.sha256(host.built)
    assert host.defined == 1                                          # the lab's pool made sure of
    assert host.lab.rbd_backend(state)["kind"] == "patched"


def test_asking_again_for_what_runs_restarts_nothing(host):
    state = lab_state(host)
    host.lab._ensure_rbd_backend(state, True)
    assert host.lab._ensure_rbd_backend(state, True) is False
    assert host.lab._ensure_rbd_backend(state, None) is False
    assert host.stopped == [4000]


def test_a_new_build_is_loaded_by_asking_for_the_patched_backend_again(host):
    state = lab_state(host)
    host.lab._ensure_rbd_backend(state, True)
    host.built.write_bytes(b"patched build 2")
    assert host.lab.rbd_backend(state)["stale"] is True
    assert host.lab._ensure_rbd_backend(state, True) is True
    assert state["libvirtd"]["sha256"] == libvirt_side.sha256(host.built)
    assert host.lab.rbd_backend(state)["stale"] is False


def test_going_back_to_debians_module_starts_libvirtd_without_the_folder(host):
    state = lab_state(host)
    host.lab._ensure_rbd_backend(state, True)
    assert host.lab._ensure_rbd_backend(state, False) is True
    assert host.started[-1] is None
    assert state["libvirtd"] == {"rbd_backend": "system",
                                 "module": f"{host.system_dir}/{libvirt_side.RBD_MODULE}"}


def test_a_libvirtd_the_lab_did_not_start_is_never_restarted(host):
    host.run(777, f"{host.system_dir}/{libvirt_side.RBD_MODULE}")
    host.foreign = 777
    state = {"daemons": [], "libvirt": {"pool": "virtrbd-lab"}}
    assert host.lab.rbd_backend(state)["started_by_lab"] is False
    with pytest.raises(LabError, match=r"libvirtd \(pid 777\) was not started by the lab"):
        host.lab._ensure_rbd_backend(state, True)
    assert host.stopped == [] and host.started == []
    assert host.lab._ensure_rbd_backend(state, None) is False      # using it as it is stays fine
