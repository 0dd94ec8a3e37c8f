"""One SIGTERM, SIGINT or SIGHUP ends any virtrbd command within a second; a second signal ends it at once.

``timeout``, systemd's stop and an agent's cancel send one SIGTERM and expect
the process to go.  A Python signal handler, though, runs only when the main
thread is executing Python code, and a command can wait much longer inside C:
librados waiting for a monitor or an OSD, an ``open`` on a stuck share.  So
the work is split in two:

- in the main thread, the handler asks the command to stop.  A backup, restore
  or verify (inside ``cooperative()``) sets the stop event and cleans up at its
  next safe point (temporary file, temporary image); any other command gets
  ``KeyboardInterrupt`` at once and unwinds through its ``finally`` blocks;
- a watcher thread hears of the signal through the wakeup fd, which Python's
  C-level handler writes whatever the main thread is doing.  If the command has
  not ended ``GRACE`` seconds later, or at a second signal, the watcher removes
  the files registered in ``virtrbd.exits`` (temporary backup files, a backup
  whose manifest is not written yet) and ends the process with its one line.

What is left then is what only the cluster could take back: a temporary image
of a restore (the next restore into that pool removes it) or the empty remains
of a clone (a rerun replaces them); the line says so.  A thread the kernel
holds in uninterruptible sleep (a hard NFS mount whose server is gone) keeps
even ``_exit`` waiting; the line says that too.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .. import exits

GRACE = 0.8                       # seconds between the first signal and the forced end
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_CODE = 130


class _State:
    def __init__(self) -> None:
        self.cooperative = 0               # nesting depth of cooperative() sections
        self.received: list[int] = []      # the signals heard so far
        self.said = False                  # the command printed its own last line
        self.code: int | None = None       # the command's exit code, once it is known


_state = _State()


def install() -> None:
    """Take over SIGINT, SIGTERM and SIGHUP for this process (the ``virtrbd`` command only, never a library)."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for sig in SIGNALS:
        signal.signal(sig, _in_main_thread)
    threading.Thread(target=_watch, args=(read_end,), name="virtrbd-signals", daemon=True).start()


@contextmanager
def cooperative() -> Iterator[None]:
    """Within the block the first signal sets the stop event instead of interrupting: the operation stops at
    its next safe point and cleans up.  Outside ``install()``'s process it only clears that event."""
    from ..backup.stream import CANCEL

    CANCEL.clear()
    _state.cooperative += 1
    try:
        yield
    finally:
        _state.cooperative -= 1


def said_last_line(code: int | None = None) -> None:
    """The command printed its own last line (and, with ``code``, is returning it): the watcher adds none."""
    _state.said = True
    if code is not None:
        _state.code = code


def _in_main_thread(signum: int, _frame) -> None:
    from ..backup.stream import CANCEL

    if _state.cooperative and not CANCEL.is_set():
        CANCEL.set()
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _watch(read_end: int) -> None:
    deadline = None
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([read_end], [], [], timeout)
        if ready:
            try:
                received = os.read(read_end, 64)
            except BlockingIOError:
                continue
            _state.received += [n for n in received if n in SIGNALS]
            if len(_state.received) >= 2:
                _end_now()
            if _state.received and deadline is None:
                deadline = time.monotonic() + GRACE
        elif deadline is not None:
            _end_now()


def _end_now() -> None:
    """The command did not end in time: take back its files, say why in one line, end the process."""
    removed = exits.remove_all()
    if not _state.said:
        name = signal.Signals(_state.received[0]).name if _state.received else "signal"
        what = f"interrupted ({name}): "
        if _main_thread_in_the_kernel():
            what += ("a thread waits in uninterruptible I/O (a hard NFS mount, a dead disk?), so the process "
                     "ends only when the kernel lets it go")
        else:
            what += "stopped without waiting for Ceph or the disk any longer"
        if removed:
            what += f"; removed {len(removed)} unfinished file(s)"
        for note in exits.notes():
            what += f"; left {note}"
        try:       # the user's stderr: fd 2 may point at /dev/null (common.divert_native_stderr)
            os.write(sys.stderr.fileno(), f"virtrbd: {what}\n".encode())
        except (OSError, ValueError):
            pass
    os._exit(_state.code if _state.code is not None else EXIT_CODE)


def _main_thread_in_the_kernel() -> bool:
    """Whether the main thread sleeps uninterruptibly (state D), which not even _exit can cut short."""
    try:
        with open(f"/proc/self/task/{threading.main_thread().native_id}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "D"
    except (OSError, IndexError):
        return False
