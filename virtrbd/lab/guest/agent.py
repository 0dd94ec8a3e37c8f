"""The guest agent of a running lab guest, through libvirt (``virDomainQemuAgentCommand``).

``ping`` says whether the agent answers; ``run`` runs a command in the guest
(``guest-exec`` with its output captured, then ``guest-exec-status`` until it
has exited) and returns its exit status and output.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from ...errors import LabError


@dataclass(frozen=True)
class Completed:
    """A command that ran in the guest."""

    exit_code: int
    stdout: bytes
    stderr: bytes


class Agent:
    """The agent of one domain (a ``libvirt.virDomain``)."""

    def __init__(self, domain, *, timeout: int = 10):
        import libvirt
        import libvirt_qemu
        self.domain = domain
        self.timeout = timeout
        self._libvirt = libvirt
        self._qemu = libvirt_qemu

    def command(self, execute: str, arguments: dict[str, Any] | None = None) -> Any:
        """One agent command; its ``return`` value.  A libvirt or agent error is a LabError naming it."""
        request: dict[str, Any] = {"execute": execute}
        if arguments:
            request["arguments"] = arguments
        try:
            reply = self._qemu.qemuAgentCommand(self.domain, json.dumps(request), self.timeout, 0)
        except self._libvirt.libvirtError as exc:
            raise LabError(f"guest {self.domain.name()}: {execute}: {exc.get_error_message()}") from None
        return json.loads(reply).get("return")

    def ping(self) -> bool:
        try:
            self.command("guest-ping")
        except LabError:
            return False
        return True

    def wait(self, deadline: float) -> bool:
        """Whether the agent answered before ``deadline`` (a ``time.monotonic()`` value)."""
        while time.monotonic() < deadline:
            if self.ping():
                return True
            time.sleep(0.2)
        return False

    def run(self, argv: list[str], *, timeout: float = 60.0) -> Completed:
        """Run ``argv`` in the guest (found in its PATH) and wait for it, at most ``timeout`` seconds."""
        started = self.command("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
        pid = started["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status = self.command("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise LabError(f"guest {self.domain.name()}: {' '.join(argv)} did not end within {timeout:g} s")
            time.sleep(0.05)
        return Completed(exit_code=status.get("exitcode", -status.get("signal", 1)),
                         stdout=base64.b64decode(status.get("out-data", "")),
                         stderr=base64.b64decode(status.get("err-data", "")))
