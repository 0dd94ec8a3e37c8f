"""The lab's real guests: defined, started until their agent answers, reached, stopped and removed.

Every failure on the way up (a kit that cannot be built, a hook that refuses,
a guest that does not answer within its deadline, with the tail of its serial
console) is one ``LabError`` and leaves no domain defined.  KVM cannot boot a
Linux kernel on some machines (nested virtualisation: the kernel's decompressor
spins forever), so whether it can is found out once per machine, by booting the
kit with a deadline; TCG serves where it cannot.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ...config import Config
from ...errors import LabError, LibvirtError
from ...libvirt.host import Host, libvirt_translated
from ..domains import remove_domain
from . import ACCELERATOR_FILE, accelerator_said
from .agent import Agent, Completed
from .domain import GuestSpec, guest_xml
from .kit import GuestKit, Kit

#: seconds a guest has from start to its agent answering (TCG on a loaded two-core machine boots in ~4 s)
COME_UP = 90.0
#: seconds KVM gets to boot the kit once, before the lab settles for TCG on this machine
KVM_PROBE = 20.0
#: seconds a clean shutdown may take
SHUT_DOWN = 30.0
READY = b"virtrbd-guest: ready"


class Guests:
    """The guests of the lab whose config is ``config``; their kit, consoles and findings live in ``folder``."""

    def __init__(self, config: Config, folder: Path):
        self.config = config
        self.folder = Path(folder)
        self.kit = GuestKit(self.folder / "kit")
        self.consoles = self.folder / "console"

    def console(self, name: str) -> Path:
        return self.consoles / f"{name}.log"

    # --- life cycle -----------------------------------------------------------------------------

    def create(self, spec: GuestSpec, *, come_up: float = COME_UP) -> float:
        """Define and start ``spec``; return once its agent answers (the seconds it took).  On any failure the
        domain is removed again."""
        started = time.monotonic()
        self.define(spec)
        try:
            self.start(spec.name, come_up=come_up, since=started)
        except BaseException:
            with Host(self.config.libvirt.uri) as host:
                _remove(host, spec.name)
            raise
        return time.monotonic() - started

    def define(self, spec: GuestSpec) -> None:
        """Define ``spec`` as a domain booting the kit (built when missing), not started."""
        kit = self.kit.build()
        domain_type = self.accelerator(kit)
        self.consoles.mkdir(parents=True, exist_ok=True, mode=0o755)
        with Host(self.config.libvirt.uri) as host:
            if host.find_domain(spec.name) is not None:
                raise LabError(f"domain {spec.name}: already exists (virtrbd lab vm rm {spec.name})")
            xml = guest_xml(self.config, spec, kit, domain_type=domain_type, console=self.console(spec.name))
            with libvirt_translated(host.libvirt, f"defining domain {spec.name}"):
                host.conn.defineXML(xml)

    def start(self, name: str, *, come_up: float = COME_UP, since: float | None = None) -> float:
        """Start the defined guest ``name``; return once its agent answers, at most ``come_up`` seconds after
        ``since`` (default: now).  A guest that does not answer in time is destroyed, and the error ends with
        the tail of its serial console."""
        started = time.monotonic() if since is None else since
        self.console(name).unlink(missing_ok=True)
        with Host(self.config.libvirt.uri) as host:
            domain = self._domain(host, name)
            with libvirt_translated(host.libvirt, f"starting domain {name}"):
                domain.create()
            if not Agent(domain).wait(started + come_up):
                with libvirt_translated(host.libvirt, f"destroying domain {name}"):
                    domain.destroy()
                raise LabError(f"guest {name}: its agent did not answer within {come_up:g} s; its "
                               f"console ended: {self.tail(name)}")
        return time.monotonic() - started

    def run(self, name: str, argv: list[str], *, timeout: float = 60.0) -> Completed:
        """Run ``argv`` in guest ``name`` through its agent."""
        with Host(self.config.libvirt.uri) as host:
            return Agent(self._domain(host, name)).run(argv, timeout=timeout)

    def stop(self, name: str, *, within: float = SHUT_DOWN) -> None:
        """Shut the guest down cleanly (its writers stopped, filesystems unmounted) and wait until it is off."""
        with Host(self.config.libvirt.uri) as host:
            domain = self._domain(host, name)
            if not domain.isActive():
                return
            with libvirt_translated(host.libvirt, f"shutting down domain {name}"):
                domain.shutdownFlags(host.libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
            deadline = time.monotonic() + within
            while domain.isActive():
                if time.monotonic() > deadline:
                    with libvirt_translated(host.libvirt, f"destroying domain {name}"):
                        domain.destroy()
                    raise LabError(f"guest {name}: did not shut down within {within:g} s; destroyed "
                                   f"(its console ended: {self.tail(name)})")
                time.sleep(0.1)

    def remove(self, name: str) -> None:
        """Destroy the guest if it runs and undefine it (the hook then releases its ephemeral clones)."""
        with Host(self.config.libvirt.uri) as host:
            self._domain(host, name)                # a name never defined is an error here
            _remove(host, name)
        self.console(name).unlink(missing_ok=True)

    def tail(self, name: str, lines: int = 3) -> str:
        """The last lines of the guest's serial console, on one line."""
        try:
            text = self.console(name).read_bytes().decode(errors="replace")
        except OSError:
            return "(no console output)"
        last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(last) or "(no console output)"

    def _domain(self, host: Host, name: str):
        domain = host.find_domain(name)
        if domain is None:
            raise LabError(f"domain {name}: not defined (virtrbd lab vm create {name} …)")
        return domain

    # --- KVM or TCG -------------------------------------------------------------------------------

    def accelerator(self, kit: Kit) -> str:
        """``kvm`` when KVM boots the kit on this machine, else ``qemu`` (TCG); found out once, then kept."""
        machine = f"{kit.release} on {os.uname().release}"
        known = accelerator_said(self.folder)
        if known is not None and known.get("machine") == machine and known.get("domain_type") in ("kvm", "qemu"):
            return known["domain_type"]
        domain_type, why = self._probe_kvm(kit)
        found = {"machine": machine, "domain_type": domain_type, "why": why}
        (self.folder / ACCELERATOR_FILE).write_text(json.dumps(found) + "\n")
        return domain_type

    def _probe_kvm(self, kit: Kit) -> tuple[str, str]:
        if not os.path.exists("/dev/kvm"):
            return "qemu", "no /dev/kvm on this machine"
        self.consoles.mkdir(parents=True, exist_ok=True, mode=0o755)
        console = self.console("virtrbd-kvm-probe")
        console.unlink(missing_ok=True)
        spec = GuestSpec("virtrbd-kvm-probe", disks=(), memory_mib=128)
        with Host(self.config.libvirt.uri) as host:
            try:
                with libvirt_translated(host.libvirt, "starting the KVM probe"):
                    host.conn.createXML(guest_xml(self.config, spec, kit, domain_type="kvm", console=console))
            except LibvirtError as exc:     # /dev/kvm there but not for QEMU (a container, its groups)
                return "qemu", f"QEMU could not use KVM: {exc}"
            try:
                deadline = time.monotonic() + KVM_PROBE
                while time.monotonic() < deadline:
                    if console.exists() and READY in console.read_bytes():
                        return "kvm", "KVM boots the guest kit"
                    time.sleep(0.2)
            finally:
                _remove(host, spec.name)
                console.unlink(missing_ok=True)
        return "qemu", f"KVM did not boot the guest kit within {KVM_PROBE:g} s (nested virtualisation?)"


def _remove(host: Host, name: str) -> None:
    """The lab's one way to remove a domain (``lab.domains.remove_domain``), its errors in one line."""
    with libvirt_translated(host.libvirt, f"removing domain {name}"):
        remove_domain(host.conn, name)

