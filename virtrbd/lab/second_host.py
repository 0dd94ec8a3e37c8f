"""Host ``b``: a second hypervisor on the same machine, for live migration between two libvirtds.

libvirtd keeps its configuration, state, sockets, logs and hooks in fixed
folders (/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
/var/log/libvirt).  Host b gets private copies of them under the lab's root,
bind-mounted over the real ones in a mount namespace of its own: its virtlogd,
its libvirtd and every QEMU it starts see only b's, while the network (and so
the lab's Ceph on 127.0.0.1) is shared.  A network namespace would not do: the
monitor listens on the first namespace's loopback.  The namespace lives as long
as a process in it does, so stopping b's daemons and domains leaves no mount.

What makes b a host of its own to libvirt: its own ``host_uuid`` (without
SMBIOS each libvirtd draws one; equal ones refuse a migration as "to the same
host"), no cgroup controllers (both daemons would name a domain's cgroup the
same), a TCP listener on 127.0.0.1 only for peer-to-peer migration from host a,
and a path to host a's socket inside its namespace for migration back.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from ..errors import LabError
from . import libvirt_side, processes
from .libvirt_side import wait_socket

NAME = "b"
#: b's private copy of each of libvirt's folders, by the name of its copy under b's folder
FOLDERS = {"etc": Path("/etc/libvirt"), "run": Path("/run/libvirt"), "lib": Path("/var/lib/libvirt"),
           "cache": Path("/var/cache/libvirt"), "log": Path("/var/log/libvirt")}
#: what of host a's /etc/libvirt b does not inherit: its objects are b's own (the lab defines them)
NOT_INHERITED = ("secrets/*", "storage/*.xml", "storage/autostart/*", "qemu/*.xml", "qemu/autostart/*",
                 "qemu/networks/autostart/*")
#: b's libvirtd listens on the lab's monitor port plus this (inside the lab's reserved range)
TCP_OFFSET = 90


class SecondHost:
    """Host b of the lab rooted at ``root`` whose monitor listens on ``mon_port``."""

    def __init__(self, root: Path, mon_port: int):
        self.dir = Path(root) / f"host-{NAME}"
        self.tcp_port = mon_port + TCP_OFFSET

    # --- addresses -------------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        """b's libvirtd socket, as seen from the machine (host a's namespace)."""
        return self.dir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def tcp_uri(self) -> str:
        """The URI host a's libvirtd reaches b by, for peer-to-peer migration."""
        return f"qemu+tcp://127.0.0.1:{self.tcp_port}/system"

    @property
    def a_uri(self) -> str:
        """The URI b's libvirtd reaches host a by, from inside b's namespace (peer-to-peer back to a)."""
        return f"qemu+unix:///system?socket={self.dir / 'a-run' / 'libvirt-sock'}"

    @property
    def conf_file(self) -> Path:
        """virtrbd's configuration on b: its hook logs to b's folder, its tools talk to b's libvirtd."""
        return self.dir / "virtrbd.conf"

    @property
    def hooks_dir(self) -> Path:
        return self.dir / "etc" / "hooks"

    # --- bring-up --------------------------------------------------------------------------------

    def prepare(self) -> str:
        """b's folders, copied from host a's as they are now, and b's settings; returns b's host UUID."""
        self.remove_files()
        self.dir.mkdir(mode=0o755, parents=True)
        for copy, original in FOLDERS.items():
            if copy in ("etc", "lib", "cache") and original.is_dir():
                _run(["cp", "-a", str(original), str(self.dir / copy)], f"copying {original} for host {NAME}")
            else:
                (self.dir / copy).mkdir(mode=0o755)
        (self.dir / "log" / "qemu").mkdir(mode=0o750)
        (self.dir / "a-run").mkdir(mode=0o755)
        etc = self.dir / "etc"
        for pattern in NOT_INHERITED:
            for path in etc.glob(pattern):
                if path.is_file() or path.is_symlink():
                    path.unlink()
        host_uuid = str(uuid.uuid4())
        _append(etc / "libvirtd.conf", f"\n# host {NAME} of the virtrbd lab\nlisten_tls = 0\nlisten_tcp = 1\n"
                f'tcp_port = "{self.tcp_port}"\nlisten_addr = "127.0.0.1"\nauth_tcp = "none"\n'
                f'host_uuid = "{host_uuid}"\n')
        _append(etc / "qemu.conf", f"\n# host {NAME} of the virtrbd lab: host a's cgroups would be shared\n"
                "cgroup_controllers = [ ]\n")
        return host_uuid

    def start(self, record, env: dict[str, str]) -> None:
        """Start b's virtlogd in a new mount namespace with b's folders bound in, then b's libvirtd in it."""
        binds = [f'mount --bind /run/libvirt "{self.dir / "a-run"}"']          # host a's sockets, first
        binds += [f'mount --bind "{self.dir / copy}" "{original}"' for copy, original in FOLDERS.items()]
        script = " && ".join([*binds, f'exec virtlogd -p /run/libvirt/virtlogd.pid -f "{self.dir}/etc/virtlogd.conf"'])
        virtlogd = processes.start(f"virtlogd@{NAME}", ["unshare", "-m", "--propagation", "private", "--",
                                                        "sh", "-ec", script], self.dir / "virtlogd.log",
                                   marker=str(self.dir), env=env)
        record(virtlogd)
        wait_socket(self.dir / "run" / "virtlogd-sock", virtlogd, self.dir / "virtlogd.log")
        libvirtd = processes.start(f"libvirtd@{NAME}", ["nsenter", "-t", str(virtlogd.pid), "-m", "-r", "-w", "--",
                                                        "libvirtd", "--listen", "-p", "/run/libvirt/libvirtd.pid",
                                                        "-f", f"{self.dir}/etc/libvirtd.conf"],
                                   self.dir / "libvirtd.log", marker=str(self.dir), env=env)
        record(libvirtd)
        wait_socket(self.socket, libvirtd, self.dir / "libvirtd.log")

    def up(self, cluster, info: dict, record, env: dict[str, str], write_config) -> dict:
        """Bring b up beside a running host a: folders, daemons, the lab's secret (same UUID) and pool, and
        virtrbd's hook; return what the lab records about b."""
        from .. import hook_install

        host_uuid = self.prepare()
        write_config(self.conf_file, self.uri, self.dir / "hook.log")
        hook_install.install(self.conf_file, hooks_dir=self.hooks_dir, notify=False)
        self.start(record, env)
        libvirt_side.define_objects(cluster, info, uri=self.uri)
        return {"uri": self.uri, "tcp_uri": self.tcp_uri, "a_uri": self.a_uri, "host_uuid": host_uuid,
                "config": str(self.conf_file)}

    def healthy(self, info: dict) -> bool:
        return libvirt_side.healthy(info, self.uri, self.socket)

    def remove_objects(self, info: dict, mon_port: int) -> None:
        """Every domain on b (b is the lab's alone), then the lab's pool and secret there."""
        libvirt_side.remove_objects(info, mon_port, uri=self.uri, sock=self.socket, every_domain=True)

    def remove_files(self) -> None:
        """b's folders, once its daemons are gone (its namespace, and the mounts in it, with them)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as out:
        out.write(text)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise LabError(f"{what}: {' '.join(done.stderr.split()) or f'exit {done.returncode}'}")
