"""The lab's hypervisor half: libvirtd (started when not running), the ceph secret, an rbd pool.

Bookworm ships the monolithic libvirtd; without systemd the lab starts
``virtlogd`` first (QEMU's console log goes through it and a domain start fails
without it), then ``libvirtd`` in system mode, both in the foreground of their
own session so their PIDs are known.  The first start of libvirtd probes QEMU
for several seconds; later starts answer at once from its capabilities cache.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from ..errors import LabError, LibvirtError
from ..keyring import read_key
from ..monitor import Monitor
from ..xml.common import SecretRef
from ..xml.pool import PoolDef
from ..xml.secret import SecretDef
from . import processes
from .ceph_cluster import CephCluster

log = logging.getLogger(__name__)

URI = "qemu:///system"
LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
              "HOME": "/root"}


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def wait_socket(path: Path, daemon: processes.Daemon, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _socket_answers(path):
            return
        if not processes.alive(daemon.pid):
            raise LabError(f"{daemon.name} exited at start-up; see {log_path}")
        time.sleep(0.02)
    raise LabError(f"{daemon.name} did not open {path} within {timeout:g} s")


def make_kvm_usable() -> str:
    """Let QEMU (user libvirt-qemu) open /dev/kvm; return the domain type to use: kvm or qemu (TCG)."""
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return "qemu"
    try:
        gid = grp.getgrnam("kvm").gr_gid
        st = kvm.stat()
        if st.st_gid != gid or (st.st_mode & 0o060) != 0o060:
            os.chown(kvm, -1, gid)
            os.chmod(kvm, 0o660)
    except (KeyError, OSError) as exc:
        log.warning("cannot open /dev/kvm to group kvm (%s); domains may need TCG", exc)
    return "kvm"


#: the hypervisor's daemons the lab starts, in the order it starts them (host b's are named "...@b")
DAEMONS = ("virtlogd", "libvirtd")


def is_hypervisor_daemon(name: str) -> bool:
    """A record of libvirt's side (host a's or b's), not of Ceph's."""
    return name.split("@")[0] in DAEMONS


def start_daemons(log_dir: Path, record, env_extra: dict[str, str] | None = None) -> None:
    """Start virtlogd and libvirtd unless they already answer on their sockets."""
    for name in DAEMONS:
        if _socket_answers(_SOCKETS[name]):
            log.info("%s already running; the lab uses it and will leave it running", name)
            continue
        record(start_daemon(name, log_dir, env_extra))


_SOCKETS = {"virtlogd": VIRTLOGD_SOCKET, "libvirtd": LIBVIRT_SOCKET}


def start_daemon(name: str, log_dir: Path, env_extra: dict[str, str] | None = None) -> processes.Daemon:
    """Start virtlogd or libvirtd and wait until it answers on its socket."""
    log_path = log_dir / f"{name}.log"
    daemon = processes.start(name, [name], log_path, marker=name, env=dict(DAEMON_ENV, **(env_extra or {})))
    wait_socket(_SOCKETS[name], daemon, log_path)
    return daemon


def libvirtd_answers() -> bool:
    return _socket_answers(LIBVIRT_SOCKET)


# --- libvirt's rbd storage backend: Debian's module, or the one built from patches/ ------------------

SYSTEM_BACKEND_DIR = Path("/usr/lib/x86_64-linux-gnu/libvirt/storage-backend")
RBD_MODULE = "libvirt_storage_backend_rbd.so"
BACKEND_DIR_ENV = "LIBVIRT_STORAGE_BACKEND_DIR"
#: where tools/build-libvirt-rbd (make libvirt-patched) leaves the module, in a source checkout
BUILT_MODULE = Path(__file__).resolve().parents[2] / "build" / "libvirt" / "out" / RBD_MODULE
BUILT_MODULE_ENV = "VIRTRBD_LIBVIRT_RBD_MODULE"


def built_module() -> Path:
    """The patched rbd backend as built by ``make libvirt-patched``; a LabError when it is missing."""
    module = Path(os.environ.get(BUILT_MODULE_ENV) or BUILT_MODULE)
    if not module.is_file():
        raise LabError(f"the patched rbd storage backend is not built ({module} is missing): "
                       f"run 'make libvirt-patched' in virtrbd's source tree")
    return module


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_backend_dir(folder: Path, module: Path) -> Path:
    """A storage-backend folder for libvirtd: a copy of ``module`` as the rbd backend and links
    to Debian's other backends.  A copy, so that rebuilding never changes a loaded module."""
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    for entry in folder.iterdir():
        entry.unlink()
    for system in sorted(SYSTEM_BACKEND_DIR.glob("libvirt_storage_backend_*.so")):
        if system.name != RBD_MODULE:
            (folder / system.name).symlink_to(system)
    tmp = folder / f".{RBD_MODULE}.tmp"
    shutil.copyfile(module, tmp)
    tmp.chmod(0o644)
    tmp.replace(folder / RBD_MODULE)
    return folder


def loaded_rbd_module(pid: int) -> str | None:
    """The path of the rbd backend a running libvirtd has loaded (from /proc/PID/maps), or None."""
    try:
        return rbd_module_in_maps(Path(f"/proc/{pid}/maps").read_text(errors="replace"))
    except OSError:
        return None


def rbd_module_in_maps(maps: str) -> str | None:
    """The rbd backend's path in the text of a /proc/PID/maps (" (deleted)" when replaced since)."""
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].removesuffix(" (deleted)").endswith("/" + RBD_MODULE):
            return parts[5]
    return None


def pool_name(port: int) -> str:
    return "virtrbd-lab" if port == 40100 else f"virtrbd-lab-{port}"


def plan_objects(cluster: CephCluster) -> dict:
    """Names and UUID of the lab's secret and pool, recorded before anything is defined."""
    spec = cluster.spec
    return {"secret_uuid": str(uuid.uuid4()), "secret_usage": f"{pool_name(spec.port)} client.{spec.client_id}",
            "pool": pool_name(spec.port)}


def define_objects(cluster: CephCluster, info: dict, uri: str = URI) -> None:
    """Define the ceph secret (its value set through the API) and the rbd pool on the libvirtd at ``uri``,
    and start the pool."""
    from ..libvirt.host import Host

    spec = cluster.spec
    secret = SecretDef(usage_name=info["secret_usage"], uuid=info["secret_uuid"],
                       description="cephx key of the virtrbd lab's hypervisor user")
    pool = PoolDef(name=info["pool"], source_name=spec.pool,
                   monitors=(Monitor("127.0.0.1", spec.port),), auth_username=spec.client_id,
                   secret=SecretRef(uuid=secret.uuid),
                   config_opts=(("client_mount_timeout", "10"), ("rados_mon_op_timeout", "10"),
                                ("rados_osd_op_timeout", "10")))
    key = read_key(cluster.client_keyring, f"client.{spec.client_id}")
    try:
        with Host(uri) as host:
            host.ensure_secret(secret, key)
            host.ensure_pool(pool, autostart=False)
    except LibvirtError as exc:
        raise LabError(f"lab libvirt objects: {exc}") from None


def remove_objects(info: dict, mon_port: int, uri: str = URI, sock: Path = LIBVIRT_SOCKET, *,
                   every_domain: bool = False) -> None:
    """Destroy the lab's domains (those whose disks use the lab's monitor, or all with ``every_domain``), its
    pool and its secret, on the libvirtd at ``uri`` (listening on ``sock``)."""
    from ..libvirt.host import Host, libvirt_translated

    if not _socket_answers(sock):
        return
    try:
        with Host(uri) as host:
            with libvirt_translated(host.libvirt, "removing the lab's domains"):
                for domain in host.conn.listAllDomains(0):
                    if every_domain or _uses_monitor(domain.XMLDesc(0), mon_port):
                        if domain.isActive():
                            domain.destroy()
                        if domain.isPersistent():
                            domain.undefineFlags(host.libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            if info.get("pool"):
                host.remove_pool(info["pool"])
            for secret in (SecretDef(usage_name=info["secret_usage"], uuid=info["secret_uuid"]),
                           SecretDef(usage_name=info["secret_usage"])):  # also one left by a failed run
                host.remove_secret(secret)
    except LibvirtError as exc:
        log.warning("lab libvirt clean-up: %s", exc)


def _uses_monitor(domain_xml: str, mon_port: int) -> bool:
    from lxml import etree

    root = etree.fromstring(domain_xml.encode())
    return bool(root.xpath("devices/disk/source[@protocol='rbd']/host[@name='127.0.0.1' and @port=$port]",
                           port=str(mon_port)))


def healthy(info: dict, uri: str = URI, sock: Path = LIBVIRT_SOCKET) -> bool:
    from ..libvirt.host import Host

    if not _socket_answers(sock):
        return False
    try:
        with Host(uri) as host:
            pool = host.find_pool(info.get("pool", ""))
            return pool is not None and bool(pool.isActive())
    except LibvirtError:
        return False
