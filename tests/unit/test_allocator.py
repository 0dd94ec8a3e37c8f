"""The command's process has one malloc arena, even though its signal watcher starts before any command."""

from __future__ import annotations

import subprocess
import sys

#: runs the command's entry point (``--help``: the watcher starts, the command exits at once), then asks
#: glibc how many arenas it made
SCRIPT = """
import atexit, ctypes, os, sys
def arenas():
    libc = ctypes.CDLL(None)
    read_end, write_end = os.pipe()
    stream = libc.fdopen(write_end, b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    os.write(1, b"arenas %d" % os.read(read_end, 1 << 20).count(b"<heap nr="))
atexit.register(arenas)
sys.argv = ["virtrbd", "--help"]
from virtrbd.cli.main import run
run()
"""


def test_the_signal_watcher_gets_no_arena_of_its_own():
    """With two arenas, librados' threads took turns between them and a backup's peak varied by 10-20 MiB."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.stdout.endswith("arenas 1"), (done.stdout[-200:], done.stderr[-2000:])
