"""``virtrbd snap create|ls|rm|protect|unprotect|rollback``: snapshots that stay in Ceph, of an image or of a
whole domain at one instant."""

from __future__ import annotations

from ..domains.request import DEFAULT_FREEZE_TIMEOUT, QUIESCE, check_request
from ..errors import UsageError
from ..units import format_size
from .common import emit_json, open_storage
from .progress import terminal_progress


def add_parser(subparsers) -> None:
    snap = subparsers.add_parser("snap", help="snapshots of an image")
    actions = snap.add_subparsers(dest="snap_action", metavar="ACTION", required=True)

    def action(name: str, help: str, func, metavar="POOL/IMAGE@SNAP"):
        parser = actions.add_parser(name, help=help)
        parser.add_argument("spec", metavar=metavar)
        parser.set_defaults(func=func)
        return parser

    create = action("create", "take a snapshot of an image, or of every rbd disk of a domain at one instant",
                    cmd_create)
    create.set_defaults(spec=None)
    create._actions[-1].nargs = "?"         # the spec is left out with --domain
    create.add_argument("--domain", metavar="NAME", help="snapshot every rbd disk of this libvirt domain at one "
                        "instant (needs --name, not POOL/IMAGE@SNAP)")
    create.add_argument("--name", metavar="SNAP", help="the snapshot's name on each of the domain's disks")
    create.add_argument("--quiesce", choices=QUIESCE, default="auto",
                        help="freeze the running guest's filesystems through its agent around the instant: auto "
                             "(when the agent answers; else crash-consistent, said), require (else nothing is "
                             "created), off (default auto)")
    create.add_argument("--freeze-timeout", type=float, default=DEFAULT_FREEZE_TIMEOUT, metavar="SECONDS",
                        help="a guard process thaws the guest at the latest this long after the freeze, whatever "
                             f"happens to virtrbd (default {DEFAULT_FREEZE_TIMEOUT:g})")
    ls = action("ls", "list snapshots with size, protection, time and clones", cmd_ls, metavar="POOL/IMAGE")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    rm = action("rm", "remove a snapshot no clone depends on", cmd_rm)
    rm.add_argument("--force", action="store_true", help="unprotect a protected snapshot first")
    action("protect", "protect a snapshot (idempotent)", cmd_protect)
    action("unprotect", "unprotect a snapshot no clone depends on", cmd_unprotect)
    rollback = action("rollback", "roll the image back to the snapshot", cmd_rollback)
    rollback.add_argument("--force", action="store_true",
                          help="roll back even while a client (a VM) has the image open")


def _open(args, snapshot: bool):
    return open_storage(args, args.spec, snapshot=snapshot)


def cmd_create(args) -> int:
    if args.domain is not None or args.name is not None:
        return _create_for_domain(args)
    if args.spec is None:
        raise UsageError("snap create: name POOL/IMAGE@SNAP, or --domain NAME --name SNAP")
    storage, spec = _open(args, snapshot=True)
    with storage:
        storage.create_snapshot(spec)
    print(f"created snapshot {spec}")
    return 0


def _create_for_domain(args) -> int:
    if args.spec is not None or args.domain is None or args.name is None:
        raise UsageError("snap create --domain NAME --name SNAP takes no POOL/IMAGE@SNAP")
    check_request(args.name, args.quiesce, args.freeze_timeout)
    from ..storage import Storage
    with Storage(args.config) as storage:
        made = storage.snapshot_domain(args.domain, args.name, quiesce=args.quiesce,
                                       freeze_timeout=args.freeze_timeout)
    print(f"created {made.describe()}")
    return 0


def cmd_ls(args) -> int:
    storage, spec = _open(args, snapshot=False)
    with storage:
        snapshots = storage.list_snapshots(spec)
    if args.json:
        emit_json(snapshots)
        return 0
    if snapshots:
        print(f"{'NAME':<24} {'SIZE':>10} {'PROTECTED':<9} {'CLONES':>6}  {'CREATED':<19}  {'ORIGIN':<7}  "
              f"CONSISTENCY")
    for s in snapshots:
        created = s.timestamp.strftime("%Y-%m-%d %H:%M:%S") if s.timestamp else "-"
        print(f"{s.name:<24} {format_size(s.size):>10} {'yes' if s.protected else 'no':<9} {s.children:>6}  "
              f"{created:<19}  {s.origin:<7}  {s.consistency or '-'}")
    return 0


def cmd_rm(args) -> int:
    storage, spec = _open(args, snapshot=True)
    with storage:
        storage.remove_snapshot(spec, force=args.force)
    print(f"removed snapshot {spec}")
    return 0


def cmd_protect(args) -> int:
    storage, spec = _open(args, snapshot=True)
    with storage:
        changed = storage.protect_snapshot(spec)
    print(f"protected {spec}" if changed else f"{spec} was already protected")
    return 0


def cmd_unprotect(args) -> int:
    storage, spec = _open(args, snapshot=True)
    with storage:
        changed = storage.unprotect_snapshot(spec)
    print(f"unprotected {spec}" if changed else f"{spec} was not protected")
    return 0


def cmd_rollback(args) -> int:
    storage, spec = _open(args, snapshot=True)
    with storage:
        storage.rollback_snapshot(spec, force=args.force,
                                  progress=terminal_progress(f"rolling back {spec}", counts_bytes=False))
    print(f"rolled {spec.image_spec} back to {spec.snapshot}")
    return 0
