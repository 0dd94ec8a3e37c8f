"""Reading a guest's filesystem on the host, nothing mounted: ``e2fsck -fn`` and ``debugfs`` on a RAW file.

What the demo shows of a backup: that it holds a clean filesystem, and the
records a guest wrote into it (each line ``N TARGET SHA256("N TARGET")``, see
``files/records``), the last of them complete with a valid checksum.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from ...errors import LabError


def filesystem_is_clean(raw: Path) -> tuple[bool, str]:
    """Whether ``e2fsck -fn`` finds the ext4 filesystem in ``raw`` clean; its last line of output."""
    done = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else ""


def last_record(raw: Path, path: str = "/records") -> int:
    """The number of the last record with a valid checksum in ``path`` of the filesystem in ``raw`` (0: none)."""
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True)
    # debugfs exits 0 even when the file is missing; what went wrong is on stderr, after its banner
    said = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if done.returncode != 0 or said:
        raise LabError(f"debugfs cannot read {path} in {raw}: {' '.join(said) or 'failed'}")
    last = 0
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == hashlib.sha256(f"{parts[0]} {parts[1]}".encode()).hexdigest():
            last = int(parts[0])
    return last
