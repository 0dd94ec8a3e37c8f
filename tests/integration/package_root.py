"""A clean Debian 12 root for the package's tests, made by debootstrap from Debian's mirror.

Commands run in it with chroot.  The root is made a mount point of its own
(``unshare --propagation`` refuses a root that is not one, as host b of the
lab needs), with /proc, /sys and the machine's /dev in it: what libvirtd and
QEMU need to run there.  A network namespace of its own, with only a
loopback, lets a second lab run there on the ports the machine's lab uses.

``remove`` kills what still runs in the root, unmounts, and deletes the
folder only once nothing is mounted under it: a bind mount of /dev left in
place would otherwise have the machine's device nodes deleted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
       "HOME": "/root"}
#: apt's downloads: shared with the machine's cache, which ``make setup`` filled with the same packages
APT_ARCHIVES = Path("/var/cache/apt/archives")
#: Debian's way to keep packages from starting services in a chroot (invoke-rc.d asks it; 101: not allowed)
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


class DebianRoot:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.netns = f"virtrbd-{self.path.name[-8:]}"

    @classmethod
    def create(cls, path: Path) -> DebianRoot:
        """debootstrap a minbase bookworm root at ``path`` with the machine's apt sources; mount what it needs."""
        root = cls(path)
        made = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(path), MIRROR],
                              capture_output=True, text=True, timeout=1200)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        sources = Path("/etc/apt/sources.list.d/debian.sources")
        if sources.exists():                        # the machine's suites: bookworm-updates and security too
            shutil.copy(sources, path / "etc/apt/sources.list.d/debian.sources")
            (path / "etc/apt/sources.list").unlink(missing_ok=True)
        policy = path / "usr/sbin/policy-rc.d"
        policy.write_text(POLICY_RC_D)
        policy.chmod(0o755)
        root._mount()
        return root

    def _mount(self) -> None:
        p = str(self.path)
        for argv in (["mount", "--bind", p, p], ["mount", "--make-private", p],
                     ["mount", "-t", "proc", "proc", f"{p}/proc"], ["mount", "-t", "sysfs", "sysfs", f"{p}/sys"],
                     ["mount", "--rbind", "/dev", f"{p}/dev"], ["mount", "--make-rslave", f"{p}/dev"]):
            subprocess.run(argv, check=True)
        if APT_ARCHIVES.is_dir():
            subprocess.run(["mount", "--bind", str(APT_ARCHIVES), f"{p}{APT_ARCHIVES}"], check=True)

    def run(self, *command: str, input: str | None = None, check: bool = True, isolated: bool = False,
            timeout: float = 900) -> subprocess.CompletedProcess:
        """``command`` in the root; ``isolated``: in its network namespace (``isolate`` made it)."""
        argv = ["chroot", str(self.path), *command]
        if isolated:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        done = subprocess.run(argv, capture_output=True, text=True, input=input, env=ENV, timeout=timeout)
        if check:
            assert done.returncode == 0, f"{' '.join(command)}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done

    def isolate(self) -> None:
        """A network namespace with only a loopback: the root's lab uses the lab's usual ports undisturbed."""
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)

    def processes(self) -> list[int]:
        """The processes whose root is this root (also in other namespaces: the lab's daemons, its QEMUs)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/root") == str(self.path):
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    def mounts(self) -> list[str]:
        with open("/proc/self/mountinfo") as info:
            points = [line.split()[4] for line in info]
        return [point for point in points if point == str(self.path) or point.startswith(f"{self.path}/")]

    def remove(self) -> None:
        for _ in range(50):
            left = self.processes()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        subprocess.run(["umount", "-R", str(self.path)], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        mounted = self.mounts()
        assert not mounted, f"still mounted, {self.path} left in place: {mounted}"
        shutil.rmtree(self.path, ignore_errors=True)
