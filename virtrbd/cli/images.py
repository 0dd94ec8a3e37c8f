"""``virtrbd ls|create|resize``: plain image operations."""

from __future__ import annotations

from ..units import format_size
from .common import emit_json, open_storage, size_arg


def add_parser(subparsers) -> None:
    ls = subparsers.add_parser("ls", help="list the images of a pool")
    ls.add_argument("pool", nargs="?", help="pool (default: [ceph] pool of the config)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_ls)

    create = subparsers.add_parser("create", help="create an image")
    create.add_argument("image", metavar="POOL/IMAGE")
    create.add_argument("--size", type=size_arg, required=True, help="e.g. 10G")
    create.set_defaults(func=cmd_create)

    resize = subparsers.add_parser("resize", help="grow (or, with --allow-shrink, shrink) an image")
    resize.add_argument("image", metavar="POOL/IMAGE")
    resize.add_argument("--size", type=size_arg, required=True, help="the new size, e.g. 20G")
    resize.add_argument("--allow-shrink", action="store_true", help="permit discarding data at the end")
    resize.set_defaults(func=cmd_resize)

    info = subparsers.add_parser("info", help="size, features, parent chain, snapshots and dependents")
    info.add_argument("image", metavar="POOL/IMAGE")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)

    rm = subparsers.add_parser("rm", help="remove an image; refused while clients, clones or snapshots depend on it")
    rm.add_argument("image", metavar="POOL/IMAGE")
    rm.add_argument("--with-snapshots", action="store_true",
                    help="also remove its snapshots (those no clone depends on; protected ones are unprotected)")
    rm.add_argument("--flatten-children", action="store_true", help="flatten the clones that depend on it first")
    rm.add_argument("--trash", action="store_true", help="move it to the RBD trash for deferred deletion")
    rm.set_defaults(func=cmd_rm)


def cmd_ls(args) -> int:
    from ..storage import Storage
    with Storage(args.config) as storage:
        images = storage.list_images(args.pool)
    if args.json:
        emit_json(images)
    else:
        print("\n".join(images) if images else "", end="\n" if images else "")
    return 0


def cmd_create(args) -> int:
    storage, spec = open_storage(args, args.image, snapshot=False)
    with storage:
        storage.create_image(spec, args.size)
    print(f"created {spec} ({format_size(args.size)})")
    return 0


def cmd_resize(args) -> int:
    storage, spec = open_storage(args, args.image, snapshot=False)
    with storage:
        storage.resize_image(spec, args.size, allow_shrink=args.allow_shrink)
    print(f"resized {spec} to {format_size(args.size)}")
    return 0


def cmd_info(args) -> int:
    storage, spec = open_storage(args, args.image, snapshot=False)
    with storage:
        info = storage.info(spec)
    if args.json:
        emit_json(info)
        return 0
    print(f"image {info.image} (id {info.id})")
    print(f"  size       {format_size(info.size)} ({info.size} bytes), objects of {format_size(info.object_size)}")
    print(f"  features   {', '.join(info.features) or '-'}")
    if info.created:
        print(f"  created    {info.created:%Y-%m-%d %H:%M:%S}")
    print(f"  clients    {info.watchers} with the image open")
    chain = " <- ".join(str(p) for p in info.parent_chain)
    print(f"  parents    {chain or '- (stands alone)'}")
    print(f"  golden     {info.golden_snapshot or '-'}")
    print(f"  snapshots  {', '.join(s.describe() for s in info.snapshots) or '-'}")
    print(f"  clones     {', '.join(f'{d} (on @{d.snapshot})' for d in info.dependents) or '-'}")
    return 0


def cmd_rm(args) -> int:
    storage, spec = open_storage(args, args.image, snapshot=False)
    with storage:
        result = storage.remove_image(spec, with_snapshots=args.with_snapshots,
                                      flatten_children=args.flatten_children, trash=args.trash)
    done = [f"moved {spec} to the trash" if result.trashed else f"removed {spec}"]
    if result.snapshots_removed:
        done.append(f"its snapshots {', '.join(result.snapshots_removed)}")
    if result.children_flattened:
        done.append(f"after flattening {', '.join(map(str, result.children_flattened))}")
    print(", ".join(done))
    return 0
