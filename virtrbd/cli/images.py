"""``virtrbd ls|create|resize``: plain image operations."""

from __future__ import annotations

from ..storage import Storage
from ..units import format_size
from .common import emit_json, size_arg


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


def cmd_ls(args) -> int:
    with Storage(args.config) as storage:
        images = storage.list_images(args.pool)
    if args.json:
        emit_json(images)
    else:
        print("\n".join(images) if images else "", end="\n" if images else "")
    return 0


def cmd_create(args) -> int:
    storage = Storage(args.config)
    spec = storage.spec(args.image, snapshot=False)  # a bad name fails before any connection
    with storage:
        storage.create_image(spec, args.size)
    print(f"created {spec} ({format_size(args.size)})")
    return 0


def cmd_resize(args) -> int:
    storage = Storage(args.config)
    spec = storage.spec(args.image, snapshot=False)
    with storage:
        storage.resize_image(spec, args.size, allow_shrink=args.allow_shrink)
    print(f"resized {spec} to {format_size(args.size)}")
    return 0
