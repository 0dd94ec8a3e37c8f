"""A daemon that the fault tools restart and that dies says why: the lab's folder is gone by the time one looks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from virtrbd.lab import faults


def test_the_last_lines_of_its_output_or_else_its_log(tmp_path):
    cluster = SimpleNamespace(logs=tmp_path)
    assert "nothing in its output or log" in faults._last_words(cluster, "osd.0")
    (tmp_path / "ceph-osd.0.log").write_text("starting\n\nbluestore: _lock_fsid failed\nabort\n")
    assert faults._last_words(cluster, "osd.0") == "starting | bluestore: _lock_fsid failed | abort"
    (tmp_path / "osd.0.stdout").write_text("unable to bind to 127.0.0.1:6800\n")
    assert faults._last_words(cluster, "osd.0") == "unable to bind to 127.0.0.1:6800"


def test_a_crash_names_its_cause_ahead_of_the_backtrace(tmp_path):
    cluster = SimpleNamespace(logs=tmp_path)
    (tmp_path / "osd.0.stdout").write_text(
        "starting osd.0\n"
        "/build/ceph/src/os/bluestore/BlueFS.cc: 1234: FAILED ceph_assert(r == 0)\n"
        " 1: (ceph::__ceph_assert_fail()+0x14f) [0x55d]\n"
        "*** Caught signal (Aborted) **\n"
        " 10: __libc_start_main()\n 11: _start()\n"
        " NOTE: a copy of the executable, or `objdump -rdS <executable>` is needed to interpret this.\n")
    words = faults._last_words(cluster, "osd.0")
    assert words.startswith("/build/ceph/src/os/bluestore/BlueFS.cc: 1234: FAILED ceph_assert(r == 0) | … | ")
    assert words.endswith("is needed to interpret this.")
    (tmp_path / "osd.0.stdout").write_text("io_setup(2) failed with EAGAIN\n 10: __libc_start_main()\n"
                                           " 11: _start()\n NOTE: objdump\n")
    assert faults._last_words(cluster, "osd.0").startswith("io_setup(2) failed with EAGAIN | … | ")


def test_the_cause_comes_from_the_newest_start_and_says_more_than_the_signal(tmp_path):
    """The output file is appended to at every start; a crash's 'Caught signal' says only that it aborted."""
    cluster = SimpleNamespace(logs=tmp_path)
    (tmp_path / "osd.0.stdout").write_text(
        "osd.0 0 unable to connect: connection failed, retrying\n"          # an earlier start's
        "osd.0 0 failed to load OSD map for epoch 79, got 0 bytes\n"
        "*** Caught signal (Aborted) **\n"
        " 10: __libc_start_main()\n 11: _start()\n NOTE: objdump\n")
    assert faults._last_words(cluster, "osd.0").startswith(
        "osd.0 0 failed to load OSD map for epoch 79, got 0 bytes | … | ")


class Lab:
    """A lab's record of daemons, and its lock, as ``faults`` uses them."""

    def __init__(self, *names: str):
        self.state = {"daemons": [{"name": name, "stopped": True} for name in names]}

    def _locked(self):
        from contextlib import nullcontext
        return nullcontext()

    def _read_state(self):
        return self.state

    def _write_state(self, state):
        self.state = state


def test_a_daemon_that_exits_at_start_up_is_started_once_more(monkeypatch):
    lab, started, serving = Lab("osd.0", "osd.1"), [], iter([faults.LabError("osd.0 exited at start-up"), None])
    pids = iter(range(100, 200))

    def launch(lab, name):
        started.append(name)
        record = next(r for r in lab.state["daemons"] if r["name"] == name)
        record.update(stopped=False, pid=next(pids))
        return "cluster", SimpleNamespace(name=name, pid=record["pid"])

    def wait_serving(launched, timeout):
        outcome = next(serving)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(faults, "launch", launch)
    monkeypatch.setattr(faults, "wait_serving", wait_serving)
    monkeypatch.setattr(faults.processes, "alive", lambda pid: pid != 100)      # the first osd.0 died
    faults.start(lab, "osd.0", "osd.1")
    assert started == ["osd.0", "osd.1", "osd.0"]


def test_a_second_exit_is_an_error_and_leaves_it_marked_stopped(monkeypatch):
    lab = Lab("osd.0")
    monkeypatch.setattr(faults, "launch", lambda lab, name: ("cluster", SimpleNamespace(name=name, pid=1)))
    monkeypatch.setattr(faults, "wait_serving", lambda launched, timeout: (_ for _ in ()).throw(
        faults.LabError("osd.0 exited at start-up: abort")))
    monkeypatch.setattr(faults.processes, "alive", lambda pid: False)
    with pytest.raises(faults.LabError, match="abort"):
        faults.start(lab, "osd.0")
    assert faults.stopped(lab) == ["osd.0"]                   # the next start (a test's clean-up) tries again
