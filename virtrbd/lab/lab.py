"""The embedded lab: a real Ceph cluster (and optionally libvirtd) on 127.0.0.1.

``Lab(root).up()`` builds it, or does nothing when a healthy one is running;
``down()`` stops only what it started and removes its files.  Its state lives
in ``root/state.json``, written as each daemon starts, so a bring-up that
failed half-way can still be torn down.  A lock file serialises concurrent
``up``/``down`` calls (two test runs, a user and a test).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import config as config_module
from ..errors import LabError
from ..probe import listening
from . import diagnosis, libvirt_side, ports, processes, report
from .ceph_cluster import CephCluster, CephSpec
from .second_host import SecondHost

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/var/tmp/virtrbd-lab")
ROOT_ENV = "VIRTRBD_LAB_DIR"
#: hypervisors a lab can have: a (the machine's libvirtd) and b (``second_host``)
MAX_HOSTS = 2


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


class Lab:
    """One lab instance rooted at a directory."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root or default_root()).absolute()
        self.state_file = self.root / "state.json"
        self.conf_file = self.root / "virtrbd.conf"

    # --- state --------------------------------------------------------------------

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LabError(f"{self.state_file}: unreadable lab state ({exc}); remove {self.root} by hand") from None

    def _write_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def daemons(self, state: dict | None = None) -> list[processes.Daemon]:
        """The daemons the lab started and that should be running (not those stopped on purpose)."""
        state = self._read_state() if state is None else state
        return [processes.Daemon(d["name"], d["pid"], d["marker"]) for d in state.get("daemons", [])
                if not d.get("stopped")]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root.parent / f".{self.root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # --- queries ---------------------------------------------------------------------

    def ceph_cluster(self, state: dict | None = None) -> CephCluster:
        state = self._read_state() if state is None else state
        return CephCluster(self.root / "ceph", CephSpec(**state.get("spec", {})))

    def is_healthy(self, state: dict | None = None) -> bool:
        """Every recorded daemon runs and the restricted client can list the pool."""
        return not self.problems(state)

    def problems(self, state: dict | None = None) -> list[str]:
        """What is wrong with the lab, one line each ([] when it is healthy): for a user, or a CI log."""
        state = self._read_state() if state is None else state
        client_error = None
        if state.get("ready"):
            client_error = diagnosis.client_error(self.conf_file, timeout=3)
        return diagnosis.problems(self, state, client_error)

    # --- up / down ---------------------------------------------------------------------

    def up(self, spec: CephSpec | None = None, *, with_libvirt: bool = False,
           libvirt_patched: bool | None = None, hosts: int = 1) -> bool:
        """Bring the lab up; return False when a healthy lab was already running (no-op).

        A healthy lab built with other settings is left alone and reported,
        never rebuilt behind the user's back (it may hold their data).

        ``libvirt_patched`` (implies ``with_libvirt``) chooses libvirtd's rbd
        storage backend: True the module built from ``patches/``, False
        Debian's; None keeps whichever runs (Debian's for a libvirtd the lab
        starts).  Switching restarts libvirtd, which the lab does only to a
        libvirtd it started: modules load only when the daemon starts.

        ``hosts=2`` (implies ``with_libvirt``) adds hypervisor b beside the
        machine's libvirtd, for live migration; a lab that has b keeps it.
        """
        spec = spec or CephSpec()
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"a lab has 1 to {MAX_HOSTS} hypervisors, not {hosts}")
        with_libvirt = with_libvirt or libvirt_patched is not None or hosts > 1
        if libvirt_patched:
            libvirt_side.built_module()          # a missing build fails before anything changes
        ports.reserve(*ports.LABS)                # every lab's, before any of them binds
        ports.reserve(spec.port, spec.port + 99)
        with self._locked():
            state = self._read_state()
            if self._only_stopped_on_purpose(state):
                from . import faults  # 'lab up' after 'lab kill osd.1' restarts it instead of rebuilding
                faults.wait_serving([faults.launch(self, d["name"]) for d in state["daemons"] if d.get("stopped")])
                state = self._read_state()
            if dead := diagnosis.dead_hypervisors(state):
                log.warning("%s ended: the lab keeps Ceph, libvirt starts again", ", ".join(d["name"] for d in dead))
                state["daemons"] = [d for d in state["daemons"] if d not in dead]
            problems = self.problems(state)
            if not problems:
                if state.get("spec") != dataclasses.asdict(spec):
                    raise LabError(f"a lab with other settings runs at {self.root} "
                                   f"({_describe(state['spec'])}); run 'virtrbd lab down' first")
                if not with_libvirt:
                    log.info("lab already up at %s", self.root)
                    return False
                if self._libvirt_healthy(state):
                    restarted = self._ensure_rbd_backend(state, libvirt_patched)
                    if self._second_host_up(state, hosts) or restarted:
                        return True
                    log.info("lab already up at %s", self.root)
                    return False
                self._libvirt_up(state, libvirt_patched, hosts)
                return True
            if state.get("ready"):
                log.warning("the lab at %s is broken (%s): building a new one", self.root, "; ".join(problems))
            self._down_locked(state)
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._check_ports_free(spec)
            started = time.monotonic()
            state = {"spec": dataclasses.asdict(spec), "daemons": [], "ready": False}
            self._write_state(state)
            cluster = CephCluster(self.root / "ceph", spec)
            cluster.build(lambda daemon: self._record(state, daemon))
            self._write_config(state)
            state["ready"] = True
            state["ceph_seconds"] = round(time.monotonic() - started, 3)
            self._write_state(state)
            log.info("Ceph part up in %.2f s", state["ceph_seconds"])
            if with_libvirt:
                self._libvirt_up(state, libvirt_patched, hosts)
            return True

    def _only_stopped_on_purpose(self, state: dict) -> bool:
        """Some daemons were stopped with 'lab stop/kill' and every other one still runs."""
        records = state.get("daemons", [])
        return (bool(state.get("ready")) and any(d.get("stopped") for d in records)
                and all(processes.is_ours(d) for d in self.daemons(state)))

    def _record(self, state: dict, daemon: processes.Daemon) -> None:
        state["daemons"].append(daemon.to_dict())
        self._write_state(state)

    def _libvirt_healthy(self, state: dict) -> bool:
        return bool(state.get("libvirt")) and libvirt_side.healthy(state["libvirt"])

    def _libvirt_up(self, state: dict, patched: bool | None = None, hosts: int = 1) -> None:
        started = time.monotonic()
        cluster = self.ceph_cluster(state)
        info = libvirt_side.plan_objects(cluster)
        info["domain_type"] = libvirt_side.make_kvm_usable()
        running = libvirt_side.libvirtd_answers()
        if not running:
            state.pop("libvirtd", None)      # what an earlier libvirtd had loaded
        libvirt_side.start_daemons(self.root, lambda daemon: self._record(state, daemon),
                                   env_extra=None if running else self._backend_env(patched))
        self._ensure_rbd_backend(state, patched, define=False)   # restarts a running one if needed
        libvirt_side.remove_objects(dict(state.get("libvirt") or info), cluster.spec.port)
        libvirt_side.remove_objects(info, cluster.spec.port)  # stale objects of the same names
        state["libvirt"] = info
        self._write_state(state)
        libvirt_side.define_objects(cluster, info)
        state["libvirt_seconds"] = round(time.monotonic() - started, 3)
        self._write_state(state)
        self._write_config(state)
        log.info("libvirt part up in %.2f s (domains use %s)", state["libvirt_seconds"], info["domain_type"])
        self._second_host_up(state, hosts)

    def second_host(self, state: dict | None = None) -> SecondHost:
        return SecondHost(self.root, self.ceph_cluster(state).spec.port)

    def _second_host_up(self, state: dict, hosts: int) -> bool:
        """Start host b when ``hosts`` asks for it and it does not run healthy; True when it was started."""
        host = self.second_host(state)
        if hosts < 2 or (state.get("hosts") and host.healthy(state["libvirt"])):
            return False
        started, info = time.monotonic(), state["libvirt"]
        if state.pop("hosts", None):            # a b that went wrong: its domains and daemons go first
            host.remove_objects(info, self.ceph_cluster(state).spec.port)
            processes.stop([d for d in self.daemons(state) if d.name.endswith("@b")], signal.SIGTERM, wait=10)
            state["daemons"] = [d for d in state["daemons"] if not d["name"].endswith("@b")]
        env = dict(libvirt_side.DAEMON_ENV,
                   **(self._backend_env((state.get("libvirtd") or {}).get("rbd_backend") == "patched") or {}))
        state["hosts"] = {"b": host.up(self.ceph_cluster(state), info, lambda daemon: self._record(state, daemon),
                                       env, lambda *where: self._write_config(state, *where))}
        self._write_state(state)
        log.info("host b up in %.2f s (%s)", time.monotonic() - started, host.uri)
        return True

    # --- libvirtd's rbd storage backend ------------------------------------------------------

    @property
    def backend_dir(self) -> Path:
        """The storage-backend folder a patched libvirtd of this lab loads its modules from."""
        return self.root / "libvirt-storage-backend"

    def _backend_env(self, patched: bool | None) -> dict[str, str] | None:
        """libvirtd's extra environment for the wanted backend (preparing its folder), or None."""
        if not patched:
            return None
        libvirt_side.prepare_backend_dir(self.backend_dir, libvirt_side.built_module())
        return {libvirt_side.BACKEND_DIR_ENV: str(self.backend_dir)}

    def _lab_libvirtd(self, state: dict) -> processes.Daemon | None:
        return next((d for d in self.daemons(state) if d.name == "libvirtd" and processes.is_ours(d)), None)

    def rbd_backend(self, state: dict | None = None) -> dict | None:
        """Which rbd backend the running libvirtd has loaded, read from the process itself."""
        state = self._read_state() if state is None else state
        daemon = self._lab_libvirtd(state)
        pid = daemon.pid if daemon else _foreign_libvirtd_pid()
        if pid is None:
            return None
        loaded = libvirt_side.loaded_rbd_module(pid)
        kind = "none"
        if loaded:
            folder = Path(loaded.removesuffix(" (deleted)")).parent
            kind = ("patched" if folder == self.backend_dir else
                    "system" if folder == libvirt_side.SYSTEM_BACKEND_DIR else "other")
        backend = {"kind": kind, "module": loaded, "pid": pid, "started_by_lab": daemon is not None}
        recorded = state.get("libvirtd") or {}
        if kind == "patched" and recorded.get("sha256"):
            backend["sha256"] = recorded["sha256"]
            try:   # rebuilt since libvirtd loaded it?
                backend["stale"] = libvirt_side.sha256(libvirt_side.built_module()) != recorded["sha256"]
            except LabError:
                backend["stale"] = False
        return backend

    def _ensure_rbd_backend(self, state: dict, patched: bool | None, *, define: bool = True) -> bool:
        """Make the running libvirtd use the wanted rbd backend; True when it was restarted for it."""
        current = self.rbd_backend(state)
        wanted = None if patched is None else ("patched" if patched else "system")
        if wanted is None:
            if current is not None:
                self._record_backend(state, current)
            return False
        if current is None:
            raise LabError(f"cannot tell which libvirtd runs (it was not started by the lab and "
                           f"/run/libvirtd.pid names no live process), so it cannot load the {wanted} rbd backend")
        if current["kind"] == wanted and not current.get("stale"):
            self._record_backend(state, current)
            return False
        daemon = self._lab_libvirtd(state)
        if daemon is None:
            raise LabError(f"libvirtd (pid {current['pid']}) was not started by the lab, which restarts "
                           f"only its own: stop that libvirtd to use the {wanted} rbd backend")
        started = time.monotonic()
        env = self._backend_env(patched)
        if processes.stop([daemon], signal.SIGTERM, wait=10):
            raise LabError(f"libvirtd (pid {daemon.pid}) did not stop within 10 s")
        state["daemons"] = [d for d in state["daemons"]
                            if (d["name"], d["pid"]) != (daemon.name, daemon.pid)]
        state.pop("libvirtd", None)
        self._write_state(state)
        self._record(state, libvirt_side.start_daemon("libvirtd", self.root, env))
        if define and state.get("libvirt"):
            # libvirtd restores the pools that were active; make sure of the lab's
            libvirt_side.define_objects(self.ceph_cluster(state), state["libvirt"])
        current = self.rbd_backend(state)
        if current is None or current["kind"] != wanted:
            raise LabError(f"libvirtd restarted but has the {current['kind'] if current else 'no'} rbd backend, "
                           f"not the {wanted} one; see {self.root / 'libvirtd.log'}")
        self._record_backend(state, current)
        log.info("libvirtd restarted with the %s rbd backend in %.2f s", wanted, time.monotonic() - started)
        return True

    def _record_backend(self, state: dict, current: dict) -> None:
        recorded = {"rbd_backend": current["kind"], "module": current["module"]}
        if current["kind"] == "patched":
            recorded["sha256"] = (current.get("sha256") or
                                  libvirt_side.sha256(self.backend_dir / libvirt_side.RBD_MODULE))
        if state.get("libvirtd") != recorded:
            state["libvirtd"] = recorded
            self._write_state(state)

    def _check_ports_free(self, spec: CephSpec) -> None:
        for port in (spec.port, spec.port + 1):
            if listening("127.0.0.1", port, timeout=0.2):
                raise LabError(f"127.0.0.1:{port} is already in use; choose another with --port")

    def _write_config(self, state: dict, path: Path | None = None, uri: str = libvirt_side.URI,
                      hook_log: Path | None = None) -> None:
        """virtrbd.conf for host a (by default) or another host of the lab: its libvirt URI, its hook log."""
        cluster = self.ceph_cluster(state)
        spec = cluster.spec
        sections = {"ceph": {"monitors": cluster.mon_addr, "client_id": spec.client_id,
                             "keyring": cluster.client_keyring, "pool": spec.pool}}
        if state.get("libvirt"):
            sections["libvirt"] = {"uri": uri, "secret_uuid": state["libvirt"]["secret_uuid"],
                                   "pool": state["libvirt"]["pool"]}
        sections["hook"] = {"log": hook_log or self.root / "hook.log"}   # where a lab user looks first
        (path or self.conf_file).write_text(config_module.render(sections))

    def down(self) -> list[str]:
        """Stop what the lab started and remove its files; return the names stopped."""
        with self._locked():
            return self._down_locked(self._read_state())

    def _down_locked(self, state: dict) -> list[str]:
        daemons = self.daemons(state)
        if state.get("libvirt"):
            if state.get("hosts"):
                self.second_host(state).remove_objects(state["libvirt"], self.ceph_cluster(state).spec.port)
            libvirt_side.remove_objects(state["libvirt"], self.ceph_cluster(state).spec.port)
        # libvirtd and virtlogd (host a's and b's) get a graceful stop; the throwaway Ceph daemons do not need one.
        hypervisor = [d for d in daemons if libvirt_side.is_hypervisor_daemon(d.name)]
        left = processes.stop(hypervisor, signal.SIGTERM, wait=10)
        left = processes.stop(left + [d for d in daemons if d not in hypervisor])
        if left:
            raise LabError("could not stop " + ", ".join(f"{d.name} (pid {d.pid})" for d in left))
        if self.root.exists():
            shutil.rmtree(self.root)
        return [d.name for d in daemons]

    # --- real guests ------------------------------------------------------------------------

    @property
    def guest_folder(self) -> Path:
        """The guests' kit, consoles and what the lab found out about KVM: beside the lab's state, so that
        a lab brought down and up again reuses the kit."""
        return self.root.parent / f"{self.root.name}-guests"

    def guests(self, host: str = "a"):
        """The real guests (``virtrbd.lab.guest.vms.Guests``) of hypervisor ``host``; needs libvirt."""
        from .guest.vms import Guests
        configs = self.host_configs()
        if host not in configs:
            raise LabError(f"host {host}: the lab has no such hypervisor (it has {', '.join(configs)}"
                           f"{'' if len(configs) > 1 else '; virtrbd lab up --hosts 2 adds b'})")
        return Guests(config_module.load(configs[host]), self.guest_folder)

    def host_configs(self) -> dict[str, Path]:
        """virtrbd's configuration for each of the lab's hypervisors, by name (a, b)."""
        state = self._read_state()
        if not state.get("libvirt"):
            raise LabError(f"no lab with libvirt at {self.root}: run 'virtrbd lab up --with-libvirt'")
        return {"a": self.conf_file, **{name: Path(h["config"]) for name, h in (state.get("hosts") or {}).items()}}

    # --- reporting -------------------------------------------------------------------------

    def env_lines(self) -> list[str]:
        if not self.conf_file.exists():
            raise LabError(f"no lab at {self.root}: run 'virtrbd lab up'")
        return [f"export VIRTRBD_CONF={self.conf_file}",
                f"export CEPH_CONF={self.ceph_cluster().conf}"]

    def status(self) -> dict:
        """What runs and whether it answers: for ``virtrbd lab status [--json]``."""
        return report.status(self, self._read_state())


def _foreign_libvirtd_pid() -> int | None:
    """The PID of a running libvirtd the lab did not start (from its pid file)."""
    if not libvirt_side.libvirtd_answers():
        return None
    try:
        pid = int(Path("/run/libvirtd.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if processes.alive(pid) else None


def _describe(spec: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.items())
