"""``virtrbd golden create|clone|children|flatten``: golden images and copy-on-write clones."""

from __future__ import annotations

import sys

from .common import emit_json, open_storage, size_arg
from .progress import terminal_progress


def add_parser(subparsers) -> None:
    golden = subparsers.add_parser("golden", help="golden base images")
    golden_actions = golden.add_subparsers(dest="golden_action", metavar="ACTION", required=True)
    create = golden_actions.add_parser(
        "create", help="make an image a golden base: a protected snapshot recorded in its metadata")
    create.add_argument("spec", metavar="POOL/IMAGE[@SNAP]", help="the snapshot is named 'golden' unless given")
    create.set_defaults(func=cmd_golden_create)

    clone = subparsers.add_parser("clone", help="copy-on-write clones of a snapshot")
    clone.add_argument("parent", metavar="POOL/IMAGE@SNAP")
    clone.add_argument("children", metavar="POOL/CHILD", nargs="+",
                       help="one or more clones to make (several are made in parallel)")
    clone.add_argument("--size", type=size_arg, help="grow the clone to this size")
    clone.add_argument("--flatten", action="store_true", help="copy the parent's data: no dependency remains")
    clone.add_argument("--exist-ok", action="store_true",
                       help="a child that is already a clone of this snapshot is fine (rerun after a failure)")
    clone.add_argument("--json", action="store_true", help="machine-readable output")
    clone.set_defaults(func=cmd_clone)

    children = subparsers.add_parser("children", help="clones that depend on an image or one snapshot")
    children.add_argument("spec", metavar="POOL/IMAGE[@SNAP]")
    children.add_argument("--json", action="store_true", help="machine-readable output")
    children.set_defaults(func=cmd_children)

    flatten = subparsers.add_parser("flatten", help="copy the parent's data into a clone so it stands alone")
    flatten.add_argument("spec", metavar="POOL/IMAGE")
    flatten.set_defaults(func=cmd_flatten)


def cmd_golden_create(args) -> int:
    storage, spec = open_storage(args, args.spec)
    with storage:
        golden = storage.make_golden(spec)
    print(f"{golden} is golden: clone it with 'virtrbd clone {golden} POOL/NAME'")
    return 0


def cmd_clone(args) -> int:
    storage, parent = open_storage(args, args.parent, snapshot=True)
    children = [storage.spec(child, snapshot=False) for child in args.children]
    with storage:
        if len(children) == 1:
            results = [storage.clone(parent, children[0], size=args.size, flatten=args.flatten,
                                     exist_ok=args.exist_ok)]
        else:
            results = storage.clone_many(parent, children, size=args.size, flatten=args.flatten,
                                         exist_ok=args.exist_ok)
    if args.json:
        emit_json(results if len(results) > 1 else results[0])
        return 0
    for result in results:
        state = "flattened" if result.flattened else f"{result.depth} ancestor(s)"
        if result.existed:
            print(f"{result.image} is already a clone of {parent} ({state})")
        else:
            print(f"cloned {parent} to {result.image} ({state})")
        if result.note:
            print(f"note: {result.image} was {result.note}", file=sys.stderr)
    return 0


def cmd_children(args) -> int:
    storage, spec = open_storage(args, args.spec)
    with storage:
        children = storage.children(spec)
    if args.json:
        emit_json(children)
    else:
        for child in children:
            print(f"{child}" + ("" if spec.snapshot else f"  (on @{child.snapshot})"))
    return 0


def cmd_flatten(args) -> int:
    storage, spec = open_storage(args, args.spec, snapshot=False)
    with storage:
        changed = storage.flatten(spec, progress=terminal_progress(f"flattening {spec}", counts_bytes=False))
    print(f"flattened {spec}" if changed else f"{spec} has no parent: nothing to flatten")
    return 0
