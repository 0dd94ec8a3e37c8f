"""``virtrbd lab up|down|status|env``: the embedded Ceph + libvirt lab."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..lab.ceph_cluster import CephSpec
from ..units import format_size
from .common import emit_json, size_arg


def add_parser(subparsers) -> None:
    lab = subparsers.add_parser("lab", help="a throwaway Ceph cluster (and libvirtd) on 127.0.0.1",
                                description="A real single-node Ceph cluster on loopback, for trying virtrbd "
                                            "and for its tests. Nothing in the storage path depends on it.")
    lab.add_argument("--dir", type=Path, default=None,
                     help="where the lab keeps its state (default $VIRTRBD_LAB_DIR or /var/tmp/virtrbd-lab)")
    actions = lab.add_subparsers(dest="lab_action", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="bring the lab up (a no-op when it is healthy)")
    up.add_argument("--with-libvirt", action="store_true",
                    help="also start virtlogd + libvirtd when needed, define the ceph secret and an rbd pool")
    up.add_argument("--libvirt-patched", action=argparse.BooleanOptionalAction, default=None,
                    help="run libvirtd with the rbd storage backend built from patches/ ('make libvirt-patched'), "
                         "or with --no-libvirt-patched Debian's; restarts a libvirtd the lab started when it "
                         "runs the other one (default: keep what runs). Implies --with-libvirt")
    up.add_argument("--hosts", type=_host_count, default=1,
                    help="hypervisors: 1 (the machine's libvirtd, a) or 2 (also b, a second libvirtd in its own "
                         "mount namespace, for live migration); 2 implies --with-libvirt")
    up.add_argument("--osds", type=_osd_count, default=1, help="number of OSDs (default 1)")
    up.add_argument("--store", choices=("memstore", "bluestore"), default="memstore",
                    help="OSD store: memstore (RAM, fast) or bluestore on a sparse file (large data)")
    up.add_argument("--store-size", type=size_arg, default=CephSpec.store_bytes,
                    help="capacity per OSD (default 8G)")
    up.add_argument("--no-mgr", action="store_true", help="skip ceph-mgr (saves ~300 MiB; no pool stats)")
    up.add_argument("--port", type=_port, default=CephSpec.port,
                    help="monitor port (msgr v2; v1 uses PORT+1, daemons PORT+10..PORT+99)")
    up.set_defaults(func=cmd_up)

    down = actions.add_parser("down", help="stop what the lab started and remove its state")
    down.set_defaults(func=cmd_down)

    status = actions.add_parser("status", help="what runs, and whether it answers")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    env = actions.add_parser("env", help="print the shell lines that point virtrbd (and ceph tools) at the lab")
    env.set_defaults(func=cmd_env)

    for action, help in (("stop", "stop a Ceph daemon gracefully (SIGTERM), e.g. mon.a or osd.1"),
                         ("kill", "kill a Ceph daemon (SIGKILL), as a crash would; OSDs survive it with bluestore"),
                         ("start", "start a stopped or killed Ceph daemon again and wait until it serves")):
        fault = actions.add_parser(action, help=help)
        fault.add_argument("daemons", metavar="DAEMON", nargs="+", help="mon.a, osd.N or mgr.x")
        fault.set_defaults(func=cmd_fault, fault=action)

    from . import lab_guest
    lab_guest.add_actions(actions)


def _osd_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 8:
        raise argparse.ArgumentTypeError(f"{text!r}: between 1 and 8 OSDs")
    return int(text)


def _host_count(text: str) -> int:
    from ..lab.lab import MAX_HOSTS
    if not text.isdigit() or not 1 <= int(text) <= MAX_HOSTS:
        raise argparse.ArgumentTypeError(f"{text!r}: the lab has 1 to {MAX_HOSTS} hypervisors")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1024 <= int(text) <= 65535 - 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a port between 1024 and 65435")
    return int(text)


def cmd_up(args) -> int:
    from ..lab import Lab
    lab = Lab(args.dir)
    spec = CephSpec(port=args.port, osds=args.osds, store=args.store, store_bytes=args.store_size,
                    mgr=not args.no_mgr)
    started = time.monotonic()
    changed = lab.up(spec, with_libvirt=args.with_libvirt, libvirt_patched=args.libvirt_patched, hosts=args.hosts)
    status = lab.status()
    if not changed:
        print(f"lab already up at {lab.root}")
    else:
        print(f"lab up at {lab.root} in {time.monotonic() - started:.2f} s")
    print(f"  ceph:    monitor {status['monitor']}, pool {spec.pool}, user client.{spec.client_id}, "
          f"{spec.osds} {spec.store} OSD(s) of {format_size(spec.store_bytes)}")
    if status.get("libvirt"):
        info = status["libvirt"]
        print(f"  libvirt: pool {info['pool']}, secret {info['secret_uuid']}, domains type {info['domain_type']}")
        if status.get("rbd_backend"):
            print(f"  libvirt: {_describe_backend(status['rbd_backend'])}")
    _print_hosts(status)
    for line in lab.env_lines():
        print(line)
    return 0


def _print_hosts(status: dict) -> None:
    """One line per hypervisor, when the lab has two (a lab of one says it all under 'libvirt')."""
    if len(status.get("hosts") or []) > 1:
        for host in status["hosts"]:
            print(f"  host {host['name']}:  {host['uri']} ({host['state']}; virtrbd config {host['config']})")


def cmd_down(args) -> int:
    from ..lab import Lab
    stopped = Lab(args.dir).down()
    print(f"lab down ({len(stopped)} process(es) stopped)" if stopped else "lab down (nothing was running)")
    return 0


def cmd_status(args) -> int:
    from ..lab import Lab
    status = Lab(args.dir).status()
    if args.json:
        emit_json(status)
    else:
        print(f"lab at {status['root']}: {status['state']}")
        if status["state"] != "down":
            print(f"  config:  {status['config']}")
            print(f"  monitor: {status['monitor']}")
            for daemon in status["daemons"]:
                state = "running" if daemon["running"] else "stopped" if daemon.get("stopped") else "GONE"
                print(f"  {daemon['name']:<9} pid {daemon['pid']:<8} {state}")
            for problem in status["problems"]:
                print(f"  problem: {problem}")
            if status.get("libvirt"):
                print(f"  libvirt: pool {status['libvirt']['pool']} ({status['libvirt_state']})")
            if status.get("rbd_backend"):
                print(f"  libvirt: {_describe_backend(status['rbd_backend'])}")
            _print_hosts(status)
            if status.get("guests"):
                print(f"  guests:  {'KVM' if status['guests']['domain_type'] == 'kvm' else 'TCG'} "
                      f"({status['guests']['why']})")
    return 0 if status["state"] == "up" else 1


def _describe_backend(backend: dict) -> str:
    """One line on the rbd storage backend the running libvirtd has loaded."""
    kind = {"patched": "patched (built from patches/)", "system": "Debian's", "none": "none loaded",
            "other": "unknown"}.get(backend["kind"], backend["kind"])
    text = f"rbd backend {kind}"
    if backend.get("module"):
        text += f", {backend['module']}"
    if backend.get("stale"):
        text += "; rebuilt since libvirtd loaded it: 'virtrbd lab up --libvirt-patched' loads the new build"
    if not backend.get("started_by_lab"):
        text += f"; libvirtd (pid {backend['pid']}) was not started by the lab"
    return text


def cmd_env(args) -> int:
    from ..lab import Lab
    for line in Lab(args.dir).env_lines():
        print(line)
    return 0


def cmd_fault(args) -> int:
    from ..lab import Lab, faults
    lab = Lab(args.dir)
    names = " ".join(args.daemons)
    if args.fault == "start":
        faults.start(lab, *args.daemons)
        print(f"{names} started")
    else:
        for name in args.daemons:
            faults.stop(lab, name, kill=args.fault == "kill")
        print(f"{names} {'killed' if args.fault == 'kill' else 'stopped'}; 'virtrbd lab start {names}' "
              f"brings them back")
    return 0
