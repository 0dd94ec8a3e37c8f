"""A watcher that samples every process's argv and environment for a secret while tests run.

One snapshot can miss a short-lived process; sampling in a thread all through
the integration run catches a key that shows up in any command line the
product (or libvirt, or QEMU) starts, however briefly.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class SecretWatcher:
    def __init__(self, secrets: list[bytes], interval: float = 0.05):
        self.secrets = [s for s in secrets if s]
        self.interval = interval
        self.samples = 0
        self.sightings: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="secret-watch", daemon=True)

    def scan_once(self) -> None:
        own = str(os.getpid())
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or entry.name == own:
                continue
            for part in ("cmdline", "environ"):
                try:
                    data = Path(entry.path, part).read_bytes()
                except OSError:
                    continue
                for secret in self.secrets:
                    if secret in data:
                        command = Path(entry.path, "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                        self.sightings.append(f"pid {entry.name} ({command}) {part}")
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.scan_once()

    def __enter__(self) -> SecretWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.scan_once()
