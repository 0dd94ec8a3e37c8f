"""``virtrbd hook install|uninstall|status``: the qemu hook in libvirt's hooks folder."""

from __future__ import annotations

from pathlib import Path

from .. import config as config_module
from .. import hook_install
from .common import emit_json


def add_parser(subparsers) -> None:
    hook = subparsers.add_parser("hook", help="the qemu hook that clones golden images at domain start")
    hook.add_argument("--hooks-dir", type=Path, default=hook_install.HOOKS_DIR,
                      help=f"libvirt's hooks folder (default {hook_install.HOOKS_DIR})")
    actions = hook.add_subparsers(dest="hook_action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="install as qemu.d/virtrbd (an existing qemu hook stays) "
                                                 "and make libvirtd notice it (SIGHUP)")
    install.set_defaults(func=cmd_install)
    uninstall = actions.add_parser("uninstall", help="remove it and tell libvirtd")
    uninstall.set_defaults(func=cmd_uninstall)
    status = actions.add_parser("status", help="is it installed, with which interpreter and config")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)


def cmd_install(args) -> int:
    config_path = config_module.resolve_path(args.config)
    target = hook_install.install(config_path, args.hooks_dir)
    pid = hook_install.libvirtd_pid()
    print(f"installed {target} (config {config_path.absolute()})")
    print(f"libvirtd (pid {pid}) told to reload its hooks" if pid else
          "libvirtd is not running; it loads the hook when it starts")
    print("live migration: every hypervisor a domain may migrate to needs this hook, a virtrbd.conf for the "
          "same cluster, and the ceph secret with the same UUID (docs/production.md)")
    return 0


def cmd_uninstall(args) -> int:
    removed = hook_install.uninstall(args.hooks_dir)
    print(f"removed {hook_install.script_path(args.hooks_dir)}" if removed else "the hook was not installed")
    return 0


def cmd_status(args) -> int:
    status = hook_install.status(args.hooks_dir)
    if args.json:
        emit_json(status)
    elif status.installed:
        print(f"installed: {status.path}")
        print(f"  interpreter  {status.interpreter}")
        print(f"  package      {status.package_root}")
        print(f"  config       {status.config}")
        print(f"  libvirtd     {'pid ' + str(status.libvirtd_pid) if status.libvirtd_pid else 'not running'}")
    else:
        print(f"not installed ({status.path} absent)")
    return 0 if status.installed else 1
