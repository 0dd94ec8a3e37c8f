"""Installing the qemu hook into libvirt: ``qemu.d/virtrbd`` beside any existing hook, then SIGHUP.

libvirt runs every executable in ``/etc/libvirt/hooks/qemu.d/`` (after
``qemu`` itself, in name order), and reads that folder only at start-up or on
SIGHUP — so installing is: write the script with this installation's package
folder, interpreter and config filled in, then tell the running daemon.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from . import config as config_module
from .errors import ConfigError, VirtrbdError

HOOKS_DIR = Path("/etc/libvirt/hooks")
SCRIPT_NAME = "virtrbd"
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")
_MARK = "virtrbd's qemu hook"


@dataclass(frozen=True)
class HookStatus:
    path: Path
    installed: bool
    interpreter: str | None = None
    package_root: str | None = None
    config: str | None = None
    libvirtd_pid: int | None = None


def script_path(hooks_dir: Path = HOOKS_DIR) -> Path:
    return hooks_dir / "qemu.d" / SCRIPT_NAME


def source() -> Path:
    """The hook script as shipped: beside the package in a checkout, under share/ when installed."""
    checkout = Path(__file__).resolve().parent.parent / "hooks" / "qemu"
    if checkout.is_file():
        return checkout
    return Path(sys.prefix) / "share" / "virtrbd" / "hooks" / "qemu"


def render(config_path: Path, interpreter: str = sys.executable) -> str:
    """The hook script for this installation: absolute interpreter, package folder and config."""
    shipped = source()
    try:
        text = shipped.read_text()
    except OSError as exc:
        raise VirtrbdError(f"{shipped}: cannot read the hook script: {exc.strerror}") from None
    package_root = str(Path(__file__).resolve().parent.parent)
    text = re.sub(r"\A#!.*\n", f"#!{interpreter} -S\n", text)
    text = re.sub(r"^MODULE_DIRS = None.*$", f"MODULE_DIRS = {module_dirs()!r}  # by virtrbd hook install", text,
                  flags=re.M)
    text = re.sub(r"^PACKAGE_ROOT = None.*$", f"PACKAGE_ROOT = {package_root!r}  # by virtrbd hook install",
                  text, flags=re.M)
    return re.sub(r"^CONFIG = None.*$", f"CONFIG = {str(config_path)!r}  # by virtrbd hook install", text,
                  flags=re.M)


def module_dirs() -> list[str]:
    """Where this interpreter finds the compiled modules the hook needs (rados, rbd, lxml)."""
    import importlib.util
    dirs: list[str] = []
    for name in ("rados", "rbd", "lxml"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise VirtrbdError(f"the {name} module is missing: run 'make setup' (python3-rados, python3-rbd, "
                               f"python3-lxml)")
        module_dir = Path(spec.origin).parent
        folder = str(module_dir.parent if name == "lxml" else module_dir)
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def install(config_path: Path, hooks_dir: Path = HOOKS_DIR, *, notify: bool = True) -> Path:
    """Write ``qemu.d/virtrbd`` (idempotent) and make a running libvirtd notice it (unless ``notify`` is
    False: for a libvirtd not started yet, or not the machine's)."""
    config_path = config_path.absolute()
    conf = config_module.load(config_path)
    if conf.ceph.keyring is None:
        raise ConfigError(f"{config_path}: [ceph] keyring: the hook reads the key from a keyring "
                          f"(it must not call back into libvirt); set it before installing")
    target = script_path(hooks_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{SCRIPT_NAME}.tmp")
    tmp.write_text(render(config_path))
    tmp.chmod(0o755)
    tmp.replace(target)
    if notify:
        notify_libvirtd()
    return target


def uninstall(hooks_dir: Path = HOOKS_DIR) -> bool:
    """Remove our script (only ours); False when it was not installed."""
    target = script_path(hooks_dir)
    if not target.exists():
        return False
    if _MARK not in target.read_text(errors="replace"):
        raise VirtrbdError(f"{target} is not virtrbd's hook; left alone")
    target.unlink()
    notify_libvirtd()
    return True


def status(hooks_dir: Path = HOOKS_DIR) -> HookStatus:
    target = script_path(hooks_dir)
    pid = libvirtd_pid()
    if not target.exists():
        return HookStatus(target, False, libvirtd_pid=pid)
    text = target.read_text(errors="replace")
    found = {key: (re.search(rf"^{key} = '([^']*)'", text, re.M) or [None, None])[1]
             for key in ("PACKAGE_ROOT", "CONFIG")}
    interpreter = text.splitlines()[0][2:].split()[0] if text.startswith("#!") else None
    return HookStatus(target, _MARK in text, interpreter, found["PACKAGE_ROOT"], found["CONFIG"], pid)


def libvirtd_pid() -> int | None:
    try:
        pid = int(LIBVIRTD_PIDFILE.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"libvirtd" in cmdline else None


def notify_libvirtd() -> int | None:
    """SIGHUP the running libvirtd so it rereads its hooks; the PID it was sent to, or None."""
    pid = libvirtd_pid()
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    return pid
