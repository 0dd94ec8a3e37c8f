"""``virtrbd config check|options``: is virtrbd.conf right, and what can it say."""

from __future__ import annotations

from .. import config as config_module
from .common import emit_json


def add_parser(subparsers) -> None:
    cfg = subparsers.add_parser("config", help="check virtrbd.conf, or list every setting")
    actions = cfg.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="load the config, connect with its credentials, report")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=cmd_check)
    options = actions.add_parser("options", help="every setting with its default and meaning")
    options.set_defaults(func=cmd_options)


def cmd_check(args) -> int:
    from ..storage import Storage
    with Storage(args.config) as storage:
        info = storage.check()
        path = storage.config.path
    if args.json:
        emit_json({"config": str(path), **info.__dict__})
    else:
        print(f"{path}: OK")
        print(f"  cluster {info.fsid} via {info.monitors} as {info.user}")
        print(f"  pool {info.pool}: {info.images} image(s)")
    return 0


def cmd_options(args) -> int:
    print(config_module.describe())
    return 0
