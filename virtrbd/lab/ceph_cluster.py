"""A throwaway Ceph cluster on 127.0.0.1: one monitor, N OSDs, an optional mgr.

Bring-up follows the tested recipe in the project notes: every key is made up
front and given to ``ceph-mon --mkfs``, OSD mkfs runs while the monitor
starts, ``paxos_propose_interval`` is short so each osdmap change is cheap, and
``rbd pool init`` (here ``RBD.pool_init``) returns once the pool takes I/O.
Ceph's daemons and bootstrap tools (ceph-mon, ceph-osd, ceph-mgr, monmaptool)
are run as processes; everything else goes through librados as client.admin.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LabError
from ..keyring import CephKey
from ..probe import listening
from . import processes
from .keys import generate_key, keyring_text, write_private

log = logging.getLogger(__name__)

GiB = 1024 ** 3


@dataclass(frozen=True)
class CephSpec:
    """What kind of cluster to build."""

    port: int = 40100                # msgr v2 port of the monitor; v1 on port + 1
    osds: int = 1
    store: str = "memstore"          # or "bluestore" (sparse file per OSD, for large data)
    store_bytes: int = 8 * GiB       # memstore: RAM cap per OSD; bluestore: file size
    mgr: bool = True
    pool: str = "rbd"
    client_id: str = "virt"          # the restricted hypervisor user, client.<id>

    @property
    def replicas(self) -> int:
        return min(self.osds, 2)


class CephCluster:
    """The cluster's files under ``root`` and the steps that bring it up."""

    def __init__(self, root: Path, spec: CephSpec):
        self.root = root
        self.spec = spec
        self.conf = root / "ceph.conf"
        self.logs = root / "log"
        self.admin_keyring = root / "ceph.client.admin.keyring"
        self.client_keyring = root / f"ceph.client.{spec.client_id}.keyring"

    def admin_handle(self, **timeouts: float):
        """A ``rados.Rados`` as client.admin with these ``*_timeout`` options set; not yet connected,
        and the caller shuts it down."""
        import rados
        handle = rados.Rados(conffile=str(self.conf), rados_id="admin")
        for option, seconds in timeouts.items():
            handle.conf_set(option, str(seconds))
        return handle

    @property
    def mon_addr(self) -> str:
        """The monitor's msgr v2 address, what librados and libvirt's <host> are given."""
        return f"127.0.0.1:{self.spec.port}"

    # --- bring-up -------------------------------------------------------------------

    def build(self, record: Callable[[processes.Daemon], None]) -> None:
        """Create and start the cluster; ``record`` is told of each daemon as it starts."""
        started = time.monotonic()
        for sub in ("log", "run", "crash", "mon", "mgr/ceph-x", "osd"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        osd_uuids = [str(uuid.uuid4()) for _ in range(self.spec.osds)]
        self.conf.write_text(self._ceph_conf(fsid))
        mkfs_keyring = self._make_keys()

        self._run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                   f"[v2:127.0.0.1:{self.spec.port},v1:127.0.0.1:{self.spec.port + 1}]",
                   str(self.root / "monmap")], "monmaptool")
        self._run(["ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a",
                   "--monmap", str(self.root / "monmap"), "--keyring", str(mkfs_keyring)], "ceph-mon --mkfs")
        mkfs_keyring.unlink()
        mon = self._daemon("mon.a", ["ceph-mon", "-c", str(self.conf), "-i", "a", "-f"], record)
        # OSD mkfs needs no monitor: overlap it with the monitor's start.
        mkfs = [subprocess.Popen(
                    ["ceph-osd", "-c", str(self.conf), "--no-mon-config", "-i", str(i), "--mkfs",
                     "--osd-uuid", osd_uuid],
                    stdin=subprocess.DEVNULL, stdout=open(self.logs / f"osd.{i}.mkfs.log", "wb"),
                    stderr=subprocess.STDOUT)
                for i, osd_uuid in enumerate(osd_uuids)]
        self._wait_port(self.spec.port, mon)
        log.info("monitor listening (+%.2fs)", time.monotonic() - started)
        for i, proc in enumerate(mkfs):
            if proc.wait(timeout=120) != 0:
                raise LabError(f"ceph-osd --mkfs for osd.{i} failed: {self._tail(self.logs / f'osd.{i}.mkfs.log')}")

        import rados
        import rbd
        admin = self.admin_handle(client_mount_timeout=30, rados_mon_op_timeout=30)
        try:
            admin.connect()
            if self.spec.mgr:
                self._daemon("mgr.x", ["ceph-mgr", "-c", str(self.conf), "-i", "x", "-f"], record)
            daemons = []
            for i, osd_uuid in enumerate(osd_uuids):
                mon_command(admin, prefix="osd new", uuid=osd_uuid, id=i)
                daemons.append(self._daemon(f"osd.{i}", ["ceph-osd", "-c", str(self.conf), "-i", str(i), "-f"],
                                            record))
            self._wait_osds_up(admin, daemons)
            log.info("%d OSD(s) up (+%.2fs)", self.spec.osds, time.monotonic() - started)
            mon_command(admin, prefix="osd pool create", pool=self.spec.pool, pg_num=8, pgp_num=8,
                        pool_type="replicated")
            ioctx = admin.open_ioctx(self.spec.pool)
            try:
                rbd.RBD().pool_init(ioctx, False)
            finally:
                ioctx.close()
            log.info("pool %s usable (+%.2fs)", self.spec.pool, time.monotonic() - started)
        except rados.Error as exc:
            raise LabError(f"bringing up the lab cluster: {exc}") from None
        finally:
            admin.shutdown()

    def _make_keys(self) -> Path:
        """Generate every key; write each keyring 0600; return the monitor's mkfs keyring."""
        pool = self.spec.pool
        entries: dict[str, tuple[CephKey, dict[str, str]]] = {
            "mon.": (generate_key(), {"mon": "allow *"}),
            "client.admin": (generate_key(), {"mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *"}),
            f"client.{self.spec.client_id}": (generate_key(), {
                "mon": "profile rbd", "osd": f"profile rbd pool={pool}", "mgr": f"profile rbd pool={pool}"}),
            "mgr.x": (generate_key(), {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"}),
        }
        for i in range(self.spec.osds):
            entries[f"osd.{i}"] = (generate_key(), {"mon": "allow profile osd", "mgr": "allow profile osd",
                                                    "osd": "allow *"})
        files = {"client.admin": self.admin_keyring,
                 f"client.{self.spec.client_id}": self.client_keyring,
                 "mgr.x": self.root / "mgr" / "ceph-x" / "keyring"}
        for i in range(self.spec.osds):
            files[f"osd.{i}"] = self.root / "osd" / f"ceph-{i}" / "keyring"
        for entity, path in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(path, keyring_text({entity: entries[entity]}))
        mkfs_keyring = self.root / "mkfs.keyring"
        write_private(mkfs_keyring, keyring_text(entries))
        return mkfs_keyring

    def _ceph_conf(self, fsid: str) -> str:
        spec, root = self.spec, self.root
        return f"""# written by 'virtrbd lab up': a throwaway cluster on loopback
[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{spec.port},v1:127.0.0.1:{spec.port + 1}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
public_network = 127.0.0.0/8
ms_bind_ipv6 = false
ms_bind_port_min = {spec.port + 10}
ms_bind_port_max = {spec.port + 99}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
keyring = {root}/ceph.$name.keyring
run_dir = {root}/run
admin_socket = {root}/run/$cluster-$name.asok
pid_file = {root}/run/$cluster-$name.pid
log_file = {root}/log/$cluster-$name.log
crash_dir = {root}/crash
mon_cluster_log_file = {root}/log/$cluster.log
osd_pool_default_size = {spec.replicas}
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
# a killed OSD is noticed in seconds, not the default 20 s (the fault tests kill some)
osd_heartbeat_interval = 1
osd_heartbeat_grace = 4
mon_osd_min_down_reporters = 1

[client]
log_file =
admin_socket =

[mon]
mon_data = {root}/mon/$cluster-$id
paxos_propose_interval = 0.05
mon_osd_full_ratio = .97
mon_osd_backfillfull_ratio = .95
mon_osd_nearfull_ratio = .93
mon_data_avail_warn = 1
mon_data_avail_crit = 0

[mgr]
mgr_data = {root}/mgr/$cluster-$id
keyring = $mgr_data/keyring

[osd]
osd_data = {root}/osd/$cluster-$id
keyring = $osd_data/keyring
osd_objectstore = {spec.store}
memstore_device_bytes = {spec.store_bytes}
bluestore_block_path = {root}/osd/$cluster-$id.block
bluestore_block_size = {spec.store_bytes}
bluestore_block_create = true
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
# small writes straight to the device, not deferred through the WAL: after a SIGKILL (the fault tests'),
# Pacific's replay of deferred writes left OSD maps with bad checksums and the OSD unable to start
# (fixed in later Ceph, ceph/ceph#60753); the lab's disk says it is rotational, where 64 KiB is the default
bluestore_prefer_deferred_size_hdd = 0
osd_memory_target = 1073741824
"""

    # --- helpers ----------------------------------------------------------------------

    def _run(self, argv: list[str], what: str) -> None:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        except FileNotFoundError:
            raise LabError(f"{argv[0]} not found: run 'make setup' (it installs the Ceph packages)") from None
        if done.returncode != 0:
            last = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-1:]
            raise LabError(f"{what} failed: {' '.join(last) or f'exit {done.returncode}'}")

    def _daemon(self, name: str, argv: list[str], record: Callable[[processes.Daemon], None]) -> processes.Daemon:
        daemon = processes.start(name, argv, self.logs / f"{name}.stdout", marker=str(self.conf))
        record(daemon)
        return daemon

    def _wait_port(self, port: int, daemon: processes.Daemon, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive([daemon])
            if listening("127.0.0.1", port, timeout=0.2):
                return
            time.sleep(0.02)
        raise LabError(f"{daemon.name} did not listen on 127.0.0.1:{port} within {timeout:g} s")

    def _wait_osds_up(self, admin, daemons: list[processes.Daemon], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(daemons)
            stat = json.loads(mon_command(admin, prefix="osd stat", format="json"))
            if stat.get("num_up_osds") == len(daemons):
                return
            time.sleep(0.05)
        raise LabError(f"the OSDs did not come up within {timeout:g} s (logs in {self.logs})")

    def _check_alive(self, daemons: list[processes.Daemon]) -> None:
        for daemon in daemons:
            if not processes.alive(daemon.pid):
                log_file = self.logs / f"ceph-{daemon.name}.log"
                raise LabError(f"{daemon.name} died during bring-up: "
                               f"{self._tail(self.logs / f'{daemon.name}.stdout') or self._tail(log_file)}")

    @staticmethod
    def _tail(path: Path) -> str:
        try:
            lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""


def mon_command(handle, **command) -> bytes:
    """Run a monitor command through librados; a failure is a one-line LabError."""
    ret, out, err = handle.mon_command(json.dumps(command), b"", timeout=30)
    if ret != 0:
        raise LabError(f"ceph {command['prefix']}: {err.strip() or f'error {ret}'}")
    return out
