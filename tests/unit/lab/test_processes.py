import sys
import time

from virtrbd.lab import processes


def sleeper(tmp_path, marker="virtrbd-test-sleeper"):
    return processes.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)", marker],
                           tmp_path / "sleeper.log", marker=marker)


def test_start_records_a_live_daemon_of_ours(tmp_path):
    daemon = sleeper(tmp_path)
    try:
        assert processes.alive(daemon.pid)
        assert processes.is_ours(daemon)
    finally:
        assert processes.stop([daemon]) == []
    # not merely "pid dead": with pid_max at 32768 on a busy machine the PID may already be reused
    assert not processes.is_ours(daemon)


def test_stop_spares_a_pid_whose_command_line_lacks_the_marker(tmp_path):
    daemon = sleeper(tmp_path)
    impostor = processes.Daemon("sleeper", daemon.pid, "/some/other/ceph.conf")
    try:
        processes.stop([impostor], wait=0.2)
        time.sleep(0.05)
        assert processes.alive(daemon.pid)
    finally:
        processes.stop([daemon])


def test_dead_and_unknown_pids():
    assert processes.state(2 ** 22 + 1) is None
    assert not processes.alive(2 ** 22 + 1)
    assert processes.stop([processes.Daemon("ghost", 2 ** 22 + 1, "x")]) == []
