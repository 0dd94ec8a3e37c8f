"""A clean Debian 12 root for the package's tests, made by debootstrap from Debian's mirror.

Commands run in it with chroot.  The root is made a mount point of its own
(``unshare --propagation`` refuses a root that is not one, as host b of the
lab needs), with what libvirtd and QEMU need to run there, none of it able to
change the machine: a /dev of its own (a tmpfs with the usual nodes, its own
ptys; the machine's /dev/kvm would have its group changed by the root's
systemd-tmpfiles to the root's kvm group, and the machine's libvirtd then
probes QEMU for ever), /proc with /proc/sys read-only, /sys read-only.  A
network namespace of its own, with only a loopback, lets a second lab run
there on the ports the machine's lab uses.

``remove`` kills what still runs in the root, unmounts, and deletes the
folder only once nothing is mounted under it.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
       "HOME": "/root"}
#: apt's downloads: shared with the machine's cache, which ``make setup`` filled with the same packages
APT_ARCHIVES = Path("/var/cache/apt/archives")
#: character devices of the root's own /dev: name -> (major, minor), as the kernel's devices.txt numbers them
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
#: Debian's way to keep packages from starting services in a chroot (invoke-rc.d asks it; 101: not allowed)
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


def machine_state() -> dict[str, object]:
    """What a root's packages could change on the machine through shared files: /dev/kvm's owner and mode
    (systemd-tmpfiles), kernel settings (sysctl in maintainer scripts)."""
    state: dict[str, object] = {}
    if os.path.exists("/dev/kvm"):
        kvm = os.stat("/dev/kvm")
        state["/dev/kvm"] = (kvm.st_uid, kvm.st_gid, stat.S_IMODE(kvm.st_mode))
    for name in ("kernel/pid_max", "fs/aio-max-nr", "vm/max_map_count", "fs/file-max"):
        state[name] = Path("/proc/sys", name).read_text()
    return state


class DebianRoot:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.netns = f"virtrbd-{self.path.name[-8:]}"

    def create(self) -> None:
        """debootstrap a minbase bookworm root at ``path`` with the machine's apt sources; mount what it needs."""
        path = self.path
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
        self._mount()

    def inside(self, path: Path | str) -> Path:
        """Where the root's ``path`` (absolute, as the root sees it) is on the machine."""
        return self.path / Path(path).relative_to("/")

    def _mount(self) -> None:
        p = str(self.path)
        for argv in (["mount", "--bind", p, p], ["mount", "--make-private", p],
                     ["mount", "-t", "proc", "proc", f"{p}/proc"],
                     ["mount", "--bind", f"{p}/proc/sys", f"{p}/proc/sys"],
                     ["mount", "-o", "remount,bind,ro", f"{p}/proc/sys"],
                     ["mount", "-t", "sysfs", "-o", "ro", "sysfs", f"{p}/sys"],
                     ["mount", "-t", "tmpfs", "-o", "mode=755,size=64m", "dev", f"{p}/dev"]):
            subprocess.run(argv, check=True)
        self._populate_dev()
        if APT_ARCHIVES.is_dir():
            subprocess.run(["mount", "--bind", str(APT_ARCHIVES), f"{p}{APT_ARCHIVES}"], check=True)

    def _populate_dev(self) -> None:
        """The device nodes a Debian system, its daemons and QEMU use; no /dev/kvm: the lab's guests run
        under TCG there (a kernel does not boot under this machine kind's KVM anyway)."""
        dev = self.path / "dev"
        for name, (major, minor) in DEVICES.items():
            os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(dev / name, 0o666)
        for name in ("pts", "shm"):
            (dev / name).mkdir()
        (dev / "shm").chmod(0o1777)
        subprocess.run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts",
                        str(dev / "pts")], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "shm", str(dev / "shm")], check=True)
        for name, target in {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
                             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}.items():
            (dev / name).symlink_to(target)

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
