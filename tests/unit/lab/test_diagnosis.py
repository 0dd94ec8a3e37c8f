"""Lab.problems: a broken lab says which daemon is gone and why, or what the monitor reports."""

import os
from pathlib import Path
from types import SimpleNamespace

from virtrbd.lab import diagnosis
from virtrbd.lab.ceph_cluster import CephCluster, CephSpec

GONE_PID = 2 ** 22 + 1       # above any pid_max: never a live process


def fake_lab(tmp_path):
    logs = tmp_path / "ceph" / "log"
    logs.mkdir(parents=True)
    cluster = SimpleNamespace(logs=logs, spec=CephSpec())
    return SimpleNamespace(root=tmp_path, ceph_cluster=lambda state: cluster), logs


def record(name, pid, **extra):
    return {"name": name, "pid": pid, "marker": "", **extra}   # "" is in every command line: a live pid is ours


def test_a_healthy_lab_has_no_problems(tmp_path):
    lab, _ = fake_lab(tmp_path)
    state = {"ready": True, "daemons": [record("mon.a", os.getpid()), record("osd.0", os.getpid())]}
    assert diagnosis.problems(lab, state, None) == []


def test_a_dead_daemon_is_named_with_the_last_telling_line_of_its_log(tmp_path):
    lab, logs = fake_lab(tmp_path)
    (logs / "ceph-osd.0.log").write_text("osd.0 booted\n"
                                         "./src/os/memstore/MemStore.cc: 123: FAILED ceph_assert(r == 0)\n"
                                         "tick\n")
    state = {"ready": True, "daemons": [record("mon.a", os.getpid()), record("osd.0", GONE_PID)]}
    found = diagnosis.problems(lab, state, "listing pool rbd: timed out")
    assert found[0] == (f"osd.0 (pid {GONE_PID}) is gone; ceph-osd.0.log ends with: "
                        "./src/os/memstore/MemStore.cc: 123: FAILED ceph_assert(r == 0)")
    # the client's failure follows from the dead daemon: no need to ask the monitor
    assert found[1:] == ["client.virt cannot list pool rbd: listing pool rbd: timed out"]


def test_a_cause_only_its_log_holds_is_found_behind_a_quiet_output(tmp_path):
    lab, logs = fake_lab(tmp_path)
    (logs / "osd.0.stdout").write_text("starting osd.0 at - osd_data /x\n")
    (logs / "ceph-osd.0.log").write_text("tick\n./src/osd/OSD.cc: 9: FAILED ceph_assert(p)\ntick\n")
    state = {"ready": True, "daemons": [record("osd.0", GONE_PID)]}
    assert diagnosis.problems(lab, state, None) == [
        f"osd.0 (pid {GONE_PID}) is gone; ceph-osd.0.log ends with: ./src/osd/OSD.cc: 9: FAILED ceph_assert(p)"]


def test_a_daemon_gone_without_a_word_points_outside(tmp_path):
    lab, logs = fake_lab(tmp_path)
    (logs / "osd.0.stdout").write_text("starting osd.0 at - osd_data /x\n")
    state = {"ready": True, "daemons": [record("osd.0", GONE_PID)]}
    assert diagnosis.problems(lab, state, None) == [
        f"osd.0 (pid {GONE_PID}) is gone; its logs give no reason (killed from outside? the kernel's OOM killer?)"]


def test_a_daemon_stopped_on_purpose_is_reported_as_such(tmp_path):
    lab, _ = fake_lab(tmp_path)
    state = {"ready": True, "daemons": [record("osd.1", GONE_PID, stopped=True)]}
    assert diagnosis.problems(lab, state, None) == [
        "osd.1 was stopped on purpose ('virtrbd lab start osd.1')"]


def test_every_daemon_up_but_no_io_asks_the_monitor(tmp_path, mocker):
    lab, _ = fake_lab(tmp_path)
    health = mocker.patch.object(diagnosis, "ceph_health", return_value=["ceph health: OSD_FULL: 1 full osd(s)"])
    state = {"ready": True, "daemons": [record("osd.0", os.getpid())]}
    assert diagnosis.problems(lab, state, "creating image rbd/x: timed out") == [
        "client.virt cannot list pool rbd: creating image rbd/x: timed out", "ceph health: OSD_FULL: 1 full osd(s)"]
    health.assert_called_once()


def test_the_monitor_health_report_becomes_one_line_per_check(mocker):
    import json
    handle = mocker.MagicMock()
    handle.mon_command.return_value = (0, json.dumps({"status": "HEALTH_ERR", "checks": {
        "OSD_DOWN": {"summary": {"message": "1 osds down"}},
        "PG_AVAILABILITY": {"summary": {"message": "Reduced data availability: 8 pgs inactive"}}}}).encode(), "")
    mocker.patch("rados.Rados", return_value=handle)
    cluster = CephCluster(Path("/nonexistent"), CephSpec())
    assert diagnosis.ceph_health(cluster) == [
        "ceph health: OSD_DOWN: 1 osds down",
        "ceph health: PG_AVAILABILITY: Reduced data availability: 8 pgs inactive"]
    handle.shutdown.assert_called_once()


def test_states_without_a_finished_lab(tmp_path):
    lab, _ = fake_lab(tmp_path)
    assert diagnosis.problems(lab, {}, None) == [f"no lab at {tmp_path}"]
    assert diagnosis.problems(lab, {"ready": False}, None) == [f"the lab at {tmp_path} never finished coming up"]


def test_only_libvirts_daemons_that_ended_are_started_again(tmp_path):
    state = {"ready": True, "daemons": [record("mon.a", os.getpid()), record("osd.0", GONE_PID),
                                        record("libvirtd", GONE_PID), record("virtlogd", os.getpid()),
                                        record("virtlogd@b", GONE_PID), record("libvirtd@b", GONE_PID, stopped=True)]}
    assert [d["name"] for d in diagnosis.dead_hypervisors(state)] == ["libvirtd", "virtlogd@b"]


def test_a_lab_whose_libvirtd_ended_keeps_its_ceph_and_starts_libvirt_again(tmp_path, mocker):
    """A crashed libvirtd once made the next 'lab up' build a new Ceph: every test after it lost its images."""
    import dataclasses

    from virtrbd.lab import Lab, ports
    from virtrbd.lab.lab import Lab as LabClass
    lab = Lab(tmp_path / "lab")
    lab.root.mkdir()
    lab._write_state({"spec": dataclasses.asdict(CephSpec()), "ready": True, "libvirt": {"pool": "virtrbd-lab"},
                      "daemons": [record("mon.a", os.getpid()), record("osd.0", os.getpid()),
                                  record("virtlogd", os.getpid()), record("libvirtd", GONE_PID)]})
    mocker.patch.object(ports, "reserve")
    mocker.patch.object(diagnosis, "client_error", return_value=None)
    mocker.patch.object(LabClass, "_libvirt_healthy", return_value=False)
    rebuilt = mocker.patch.object(LabClass, "_down_locked")
    libvirt_up = mocker.patch.object(LabClass, "_libvirt_up")
    assert lab.up(with_libvirt=True) is True
    rebuilt.assert_not_called()
    assert [d["name"] for d in libvirt_up.call_args.args[0]["daemons"]] == ["mon.a", "osd.0", "virtlogd"]
