"""``virtrbd lab guest|vm|golden``: real Linux guests in the lab, booted from RBD, reached through their agent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..units import format_size
from .common import size_arg


def add_actions(actions) -> None:
    """The lab's guest commands, beside ``lab up|down|status``."""
    guest = actions.add_parser("guest", help="the guest kit: a kernel and initramfs made from Debian's packages")
    guest_actions = guest.add_subparsers(dest="guest_action", metavar="ACTION", required=True)
    build = guest_actions.add_parser("build", help="build the kit (a no-op when it is current)")
    build.add_argument("--force", action="store_true", help="build it again even when it is current")
    build.set_defaults(func=cmd_guest_build)

    vm = actions.add_parser("vm", help="real Linux guests booted from rbd disks, with a guest agent")
    vm_actions = vm.add_subparsers(dest="vm_action", metavar="ACTION", required=True)
    create = vm_actions.add_parser("create", help="define and start a guest; returns when its agent answers")
    create.add_argument("name", help="the domain's name")
    create.add_argument("--disk", required=True, type=_disks, metavar="[POOL/]IMAGE[,…]",
                        help="its disks, vda first")
    create.add_argument("--clone-of", metavar="POOL/IMAGE@SNAP",
                        help="the hook makes the first disk as a clone of this snapshot when the guest starts")
    create.add_argument("--ephemeral", action="store_true", help="with --clone-of: the clone goes with the guest")
    create.add_argument("--memory", type=size_arg, default=256 << 20, help="guest memory (default 256M)")
    create.add_argument("--timeout", type=_seconds, default=None,
                        help="seconds the guest has to come up, its agent answering (default 90)")
    create.add_argument("--host", default="a", metavar="a|b",
                        help="the lab's hypervisor to run it on (default a; b with 'lab up --hosts 2')")
    create.set_defaults(func=cmd_vm_create)
    migrate = vm_actions.add_parser("migrate", help="live-migrate a running guest to the lab's other hypervisor; "
                                                    "returns when it runs there")
    migrate.add_argument("name")
    migrate.add_argument("--to", required=True, metavar="a|b", help="the destination host")
    migrate.add_argument("--p2p", action="store_true",
                         help="peer-to-peer: the source's libvirtd drives the migration (default: direct)")
    migrate.add_argument("--persistent", action="store_true", help="define the guest on the destination too")
    migrate.add_argument("--undefinesource", action="store_true",
                         help="move the definition: persistent on the destination, undefined on the source")
    migrate.add_argument("--json", action="store_true", help="machine-readable output")
    migrate.set_defaults(func=cmd_vm_migrate)
    run = vm_actions.add_parser("exec", help="run a command in the guest; its output, its exit status")
    run.add_argument("name")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG …]")
    run.add_argument("--timeout", type=float, default=60.0, help="seconds the command may take (default 60)")
    run.set_defaults(func=cmd_vm_exec)
    for action, help, func in (("stop", "shut the guest down cleanly (filesystems unmounted)", cmd_vm_stop),
                               ("rm", "destroy and undefine the guest", cmd_vm_rm)):
        parser = vm_actions.add_parser(action, help=help)
        parser.add_argument("name")
        parser.set_defaults(func=func)

    golden = actions.add_parser("golden", help="golden images that hold an ext4 filesystem")
    golden_actions = golden.add_subparsers(dest="golden_action", metavar="ACTION", required=True)
    make = golden_actions.add_parser("create", help="a new image with an ext4 filesystem, made golden")
    make.add_argument("image", metavar="POOL/IMAGE")
    make.add_argument("--size", type=size_arg, required=True, help="the image's size, e.g. 1G")
    make.add_argument("--from", dest="source", type=Path, help="a folder whose files the filesystem holds "
                                                                 "(default: a known set with CHECKSUMS)")
    make.set_defaults(func=cmd_golden_create)


def _disks(text: str) -> list[str]:
    disks = [part.strip() for part in text.split(",")]
    if not all(disks) or len(disks) > 26:
        raise argparse.ArgumentTypeError(f"{text!r}: one to 26 images, separated by commas")
    return disks


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds, more than 0 and at most 3600")
    return value


def _guests(args, host: str | None = None):
    """The guests of ``host``, or of the host that runs (else defines) the guest ``args.name``."""
    from ..lab import Lab
    from ..lab.guest.migration import locate
    lab = Lab(args.dir)
    return lab.guests(host or locate(lab, args.name))


def cmd_guest_build(args) -> int:
    from ..lab import Lab
    from ..lab.guest.kit import GuestKit
    kit = GuestKit(Lab(args.dir).guest_folder / "kit").build(force=args.force)
    state = "built" if kit.built else "current"
    print(f"guest kit {state} in {kit.seconds:.2f} s: {kit.kernel}, {kit.initrd} "
          f"({format_size(kit.initrd.stat().st_size)})")
    return 0


def cmd_vm_create(args) -> int:
    from ..errors import LabError
    from ..lab import Lab
    from ..lab.guest.domain import GuestSpec
    from ..lab.guest.migration import defined_on
    from ..spec import ImageSpec
    lab = Lab(args.dir)
    guests = lab.guests(args.host)
    elsewhere = defined_on(lab, args.name)
    if elsewhere:
        raise LabError(f"domain {args.name}: already exists on host {elsewhere[0]} (virtrbd lab vm rm {args.name})")
    pool = guests.config.ceph.pool
    if args.ephemeral and not args.clone_of:
        from ..errors import UsageError
        raise UsageError("--ephemeral needs --clone-of")
    spec = GuestSpec(args.name, tuple(ImageSpec.parse(disk, pool) for disk in args.disk),
                     clone_of=ImageSpec.parse(args.clone_of, pool) if args.clone_of else None,
                     ephemeral=args.ephemeral, memory_mib=max(64, args.memory >> 20))
    seconds = guests.create(spec) if args.timeout is None else guests.create(spec, come_up=args.timeout)
    print(f"guest {args.name} up in {seconds:.1f} s on host {args.host} (disks {', '.join(map(str, spec.disks))})")
    return 0


def cmd_vm_migrate(args) -> int:
    from ..lab import Lab
    from ..lab.guest.migration import migrate
    from .common import emit_json
    done = migrate(Lab(args.dir), args.name, args.to, p2p=args.p2p, persistent=args.persistent,
                   undefine_source=args.undefinesource)
    if args.json:
        emit_json(done)
    else:
        job = "?" if done.job_ms is None else f"{done.job_ms} ms"
        downtime = "?" if done.downtime_ms is None else f"{done.downtime_ms} ms"
        print(f"guest {done.name} migrated from host {done.source} to host {done.destination} "
              f"({'peer-to-peer' if done.p2p else 'direct'}) in {done.seconds:.2f} s: "
              f"libvirt's job {job}, downtime {downtime}")
    return 0


def cmd_vm_exec(args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        from ..errors import UsageError
        raise UsageError("lab vm exec: name the command to run after --")
    done = _guests(args).run(args.name, argv, timeout=args.timeout)
    sys.stdout.buffer.write(done.stdout)
    sys.stdout.flush()
    sys.stderr.write(done.stderr.decode(errors="replace"))
    return done.exit_code


def cmd_vm_stop(args) -> int:
    _guests(args).stop(args.name)
    print(f"guest {args.name} shut down")
    return 0


def cmd_vm_rm(args) -> int:
    from ..errors import LabError
    from ..lab import Lab
    from ..lab.guest.migration import defined_on
    lab = Lab(args.dir)
    hosts = defined_on(lab, args.name)       # the host that runs it first: its release removes the clones
    if not hosts:
        raise LabError(f"guest {args.name}: not defined on any of the lab's hosts")
    for host in hosts:
        lab.guests(host).remove(args.name)
    print(f"guest {args.name} removed (from host {', '.join(hosts)})")
    return 0


def cmd_golden_create(args) -> int:
    from ..lab import Lab
    from ..lab.guest.golden import create_golden_filesystem
    from ..storage import Storage
    lab = Lab(args.dir)
    storage = Storage(lab.conf_file)
    spec = storage.spec(args.image, snapshot=False)
    with storage:
        golden = create_golden_filesystem(storage, spec, args.size, args.source)
    print(f"{golden} is golden and holds an ext4 filesystem of {format_size(args.size)}")
    return 0
