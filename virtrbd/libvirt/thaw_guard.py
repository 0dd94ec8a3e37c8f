"""The thaw guard: a process of its own that thaws (and resumes) a guest whatever becomes of the one that froze it.

A Linux guest stays frozen until something thaws it, and tools that died
between the freeze and the thaw have left guests unable to write for hours.
So before virtrbd freezes or pauses a guest it starts this guard, which is

- in a session of its own: a closed terminal, Ctrl-C or a signal to virtrbd's
  process group does not reach it;
- connected to libvirt and holding the domain (by UUID) before anything is
  frozen, so it has nothing left to set up when it must act;
- the reader of a pipe whose only writer is the process that froze the guest.

The freezer writes ``arm ACTION…`` (``thaw``, ``resume``) just before it
freezes or pauses, which starts the guard's clock, and ``done`` once it has
undone that itself: the guard then exits without a call.  The pipe closing
without ``done`` (the freezer died: SIGKILL, a crash, anything) makes the guard
act at once; the clock passing ``timeout`` (the freezer hangs, Ceph hangs)
makes it act then, and so does SIGTERM.  It says what it did on its stdout and
in syslog, where an operator finds a thaw nobody else was left to report.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import syslog
import time

from ..errors import LibvirtError, VirtrbdError

READY = "ready"
#: seconds the guard has to start and connect to libvirt before the freezer gives up (nothing frozen yet)
START_WITHIN = 20.0
#: thaw attempts when libvirt is busy (a freeze still running holds the domain's agent job) and the pause between
ATTEMPTS, BETWEEN_ATTEMPTS = 5, 1.0


class ThawGuard:
    """The freezing side of the guard: start it, arm it before freezing, tell it ``done`` after thawing."""

    def __init__(self, uri: str, domain_uuid: str, timeout: float, *, start_within: float = START_WITHIN):
        self.timeout = timeout
        self.deadline: float | None = None
        self._buffer = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "virtrbd.libvirt.thaw_guard", uri, domain_uuid, repr(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._to_guard, self._from_guard = self._proc.stdin, self._proc.stdout
        said = self._line(time.monotonic() + start_within)
        if said != READY:
            self._proc.kill()
            self._proc.wait()
            raise LibvirtError(f"the thaw guard did not start: {said or 'no answer'}; nothing was frozen")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def arm(self, *actions: str) -> None:
        """Before a freeze (``thaw``) or a pause (``resume``): from now on the guard undoes it at the latest
        ``timeout`` seconds later.  The deadline kept here is never after the guard's."""
        self.deadline = time.monotonic() + self.timeout
        self._say("arm " + " ".join(actions))

    def expired(self) -> bool:
        """Whether the guard may have acted already: what was done after this is not inside the freeze."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def done(self) -> None:
        """The freezer undid everything itself: the guard ends without a call."""
        self._say("done")
        self._finish()

    def abandon(self, wait: float) -> str:
        """Leave the undoing to the guard now (the freezer's own thaw failed): what it answers within ``wait``
        seconds ("" when nothing)."""
        self._finish()
        return self._line(time.monotonic() + wait)

    def _finish(self) -> None:
        try:
            self._to_guard.close()
        except OSError:
            pass

    def _say(self, line: str) -> None:
        try:
            self._to_guard.write(line.encode() + b"\n")
            self._to_guard.flush()
        except OSError:
            pass        # the guard is gone: it acted already, or never will; the deadline check still holds

    def _line(self, deadline: float) -> str:
        """The guard's next line, or "" when it ends or ``deadline`` passes first."""
        fd = self._from_guard.fileno()
        while b"\n" not in self._buffer:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace").strip()


# --- the guard's own process -----------------------------------------------------------------------------

class _Terminated(Exception):
    pass


def _on_sigterm(_signum, _frame) -> None:
    raise _Terminated


def _tell(line: str) -> None:
    try:
        os.write(1, line.encode() + b"\n")
    except OSError:
        pass            # nobody listens any more


def _undo(domain, actions: set[str], why: str) -> int:
    """Thaw and resume as armed, retrying while libvirt is busy; the outcome told and logged."""
    for attempt in range(ATTEMPTS):
        try:
            done = []
            if "thaw" in actions:
                done.append(f"thawed {domain.thaw()} filesystem(s)")
            if "resume" in actions and domain.paused_by_a_user():
                domain.resume()
                done.append("resumed it")
            message = f"virtrbd thaw guard: domain {domain.name}: {' and '.join(done) or 'nothing to undo'} ({why})"
            status = 0
            break
        except VirtrbdError as exc:
            message = f"virtrbd thaw guard: domain {domain.name}: {exc} ({why})"
            status = 1
            if attempt + 1 < ATTEMPTS:
                time.sleep(BETWEEN_ATTEMPTS)
    syslog.syslog(syslog.LOG_WARNING if status == 0 else syslog.LOG_ERR, message)
    _tell(message)
    return status


def _watch(domain, timeout: float, actions: set[str]) -> int:
    """Wait for the freezer's word, its end or the deadline; ``actions`` grows with each ``arm``."""
    deadline: float | None = None
    buffer = b""
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([0], [], [], wait)[0]:
            return _undo(domain, actions, f"still held {timeout:g} s after the freeze")
        chunk = os.read(0, 4096)
        if not chunk:
            return _undo(domain, actions, "virtrbd ended without undoing it") if actions else 0
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            words = line.decode(errors="replace").split()
            if words[:1] == ["arm"]:
                actions |= set(words[1:])
                deadline = time.monotonic() + timeout
            elif words[:1] == ["done"]:
                return 0


def main(argv: list[str]) -> int:
    """``python -m virtrbd.libvirt.thaw_guard URI DOMAIN_UUID TIMEOUT``: started by ``ThawGuard`` only."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    uri, uuid, timeout = argv[0], argv[1], float(argv[2])
    from .domain import Domain
    from .host import Host
    try:
        domain = Domain(Host(uri), uuid=uuid)
    except VirtrbdError as exc:
        _tell(f"error: {exc}")
        return 1
    _tell(READY)
    actions: set[str] = set()
    try:
        return _watch(domain, timeout, actions)
    except _Terminated:
        return _undo(domain, actions, "the guard was terminated") if actions else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
