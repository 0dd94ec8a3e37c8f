"""One SIGTERM ends any virtrbd command within a second, whatever it waits in; a second ends it at once.

Real processes, no cluster: a monitor that never answers (192.0.2.1 is TEST-NET-1) keeps librados waiting
inside C, where no Python signal handler runs; a FIFO as the config file keeps ``open`` waiting in the
kernel for a writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from virtrbd import exits


def start(tmp_path, *args: str, mount_timeout: int = 60) -> subprocess.Popen:
    conf = tmp_path / "c.conf"
    if not conf.exists():
        conf.write_text(f"[ceph]\nmonitors = 192.0.2.1:3300\nclient_id = virt\nkeyring = {tmp_path}/k\n"
                        f"client_mount_timeout = {mount_timeout}\n")
        (tmp_path / "k").write_text("[client.virt]\n\tkey = AQBs6l5jAAAAABAAJ2T0GxkG4SZ3qZ3vY5p3Jw==\n")
        (tmp_path / "k").chmod(0o600)
    return subprocess.Popen([sys.executable, "-m", "virtrbd", "--config", str(conf), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ended_after(process: subprocess.Popen, *signals: int, settle: float = 1.5, gap: float = 0.1):
    """Send ``signals`` once the process is waiting; (seconds from the first signal to its end, code, stderr)."""
    time.sleep(settle)
    assert process.poll() is None, process.communicate()
    sent = time.monotonic()
    for n, sig in enumerate(signals):
        if n:
            time.sleep(gap)
        process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running 10 s after {signals}: {process.communicate()}")
    return time.monotonic() - sent, process.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_one_signal_ends_a_command_waiting_inside_librados(tmp_path, sig):
    seconds, code, err = ended_after(start(tmp_path, "ls"), sig)
    assert seconds < 1.0 and code == 130
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"virtrbd: interrupted ({signal.Signals(sig).name}): stopped without waiting"), err


def test_one_signal_ends_a_backup_waiting_for_its_cluster(tmp_path):
    (tmp_path / "out").mkdir()
    seconds, code, err = ended_after(start(tmp_path, "backup", "rbd/vm1@s1", str(tmp_path / "out")),
                                     signal.SIGTERM)
    assert seconds < 1.0 and code == 130 and len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path / "out") == []


def test_a_second_signal_ends_it_at_once(tmp_path):
    seconds, code, err = ended_after(start(tmp_path, "ls"), signal.SIGTERM, signal.SIGTERM, gap=0.05)
    assert seconds < 0.5 and code == 130 and len(err.splitlines()) == 1, err


def test_a_command_waiting_in_open_stops_in_its_own_words(tmp_path):
    """A blocking open returns EINTR to Python, whose handler interrupts the command itself."""
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    process = subprocess.Popen([sys.executable, "-m", "virtrbd", "--config", str(fifo), "xml", "secret"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds, code, err = ended_after(process, signal.SIGTERM, settle=1.0)
    assert seconds < 1.0 and code == 130 and err == "virtrbd: interrupted\n"


def test_the_files_registered_for_a_forced_end_are_removed_once(tmp_path):
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    kept.write_text("x")
    dropped.write_text("x")
    token = exits.remove_at_forced_exit(kept)
    exits.remove_at_forced_exit(dropped)
    exits.forget(token)
    assert exits.remove_all() == [str(dropped)]
    assert kept.exists() and not dropped.exists() and exits.remove_all() == []
