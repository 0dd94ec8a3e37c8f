"""The watcher the integration suite relies on must really see a key on a command line."""

import subprocess
import sys
import time

from ..secret_watch import SecretWatcher


def test_watcher_sees_a_secret_in_a_child_argv_and_environment():
    secret = b"NOT-A-REAL-KEY-4f1c"
    with SecretWatcher([secret], interval=0.01) as watcher:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)", secret.decode()],
                                 env={"LEAK": secret.decode()})
        time.sleep(0.3)
        child.wait()
    assert any("cmdline" in s for s in watcher.sightings)
    assert any("environ" in s for s in watcher.sightings)


def test_watcher_is_quiet_without_secret():
    with SecretWatcher([b"NOT-A-REAL-KEY-absent-7e2d"], interval=0.01) as watcher:
        time.sleep(0.05)
    assert watcher.samples > 1 and watcher.sightings == []
