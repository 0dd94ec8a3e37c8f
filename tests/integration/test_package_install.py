"""The Debian package in a clean Debian 12 root: installed with apt, used against the lab, purged.

The root is made by debootstrap from Debian's mirror (minbase), the package
installed into it with apt (its dependencies from Debian, no recommends), and
everything run inside it with chroot, on the host's network: the lab's Ceph
answers on 127.0.0.1.  An operator's own ``/etc/libvirt/hooks/qemu`` is there
before the install and must be there, unchanged, after the purge.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from virtrbd import __version__
from virtrbd.lab.domains import BOOT_SECTOR
from virtrbd.lab.domains import domain_xml as make_domain_xml

from .backup_support import MiB, scattered_writes, sha256_of

ROOT = Path(__file__).resolve().parents[2]
MIRROR = "http://deb.debian.org/debian"
OPERATORS_HOOK = "#!/bin/sh\n# the operator's own qemu hook\nexit 0\n"


def run_in(root: Path, *command: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["chroot", str(root), *command], capture_output=True, text=True, input=input,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
                               "LC_ALL": "C.UTF-8"}, timeout=900)
    if check:
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def root():
    """A fresh Debian 12 root with the package installed, removed afterwards."""
    built = subprocess.run(["make", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    subprocess.run([str(ROOT / "tools" / "install-debian-packages"), "debootstrap"], check=True)
    path = Path(f"/var/tmp/virtrbd-package-root-{uuid.uuid4().hex[:8]}")
    try:
        made = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(path), MIRROR],
                              capture_output=True, text=True, timeout=1200)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        sources = Path("/etc/apt/sources.list.d/debian.sources")
        if sources.exists():                        # the host's suites: bookworm-updates and security too
            shutil.copy(sources, path / "etc/apt/sources.list.d/debian.sources")
            (path / "etc/apt/sources.list").unlink(missing_ok=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(path / "proc")], check=True)
        hook = path / "etc/libvirt/hooks/qemu"
        hook.parent.mkdir(parents=True)
        hook.write_text(OPERATORS_HOOK)
        hook.chmod(0o755)
        shutil.copy(ROOT / f"virtrbd_{__version__}_all.deb", path / "tmp")
        run_in(path, "apt-get", "update", "-qq")
        run_in(path, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
               f"/tmp/virtrbd_{__version__}_all.deb", "man-db")
        yield path
    finally:
        subprocess.run(["umount", str(path / "proc")], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def configured(root, lab):
    """The lab's config as the operator would write it into the installed conffile, with its keyring."""
    keyring = root / "etc/ceph/lab.keyring"
    keyring.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(lab.config.ceph.keyring, keyring)
    keyring.chmod(0o600)
    conf = configparser.ConfigParser()
    conf.read_string(lab.lab.conf_file.read_text())
    conf["ceph"]["keyring"] = "/etc/ceph/lab.keyring"
    conf["hook"] = {"log": "/var/log/virtrbd-hook.log"}
    with open(root / "etc/virtrbd/virtrbd.conf", "w") as out:
        conf.write(out)
    return root


def test_the_command_and_its_manual_work_from_the_package(root):
    assert run_in(root, "virtrbd", "--version").stdout.strip() == f"virtrbd {__version__}"
    assert re.search(r"NAME\s+virtrbd\s+-\s+manage\s+Ceph\s+RBD", run_in(root, "man", "-P", "cat", "virtrbd").stdout)
    assert "--signing" in run_in(root, "man", "-P", "cat", "virtrbd-backup-key").stdout
    assert (root / "usr/share/bash-completion/completions/virtrbd").is_file()
    assert (root / "etc/libvirt/hooks/qemu").read_text() == OPERATORS_HOOK


def test_config_check_a_backup_round_trip_and_the_hook_against_the_lab(configured, lab, storage, images):
    root = configured
    checked = run_in(root, "virtrbd", "config", "check")
    assert checked.stdout.startswith("/etc/virtrbd/virtrbd.conf: OK"), checked.stdout
    name = images.create(16 * MiB, scattered_writes(16 * MiB, seed=91))
    run_in(root, "mkdir", "-p", "/var/backups/vm")
    made = run_in(root, "virtrbd", "backup", f"rbd/{name}@s1", "/var/backups/vm", "--format", "qcow2")
    assert "backed up" in made.stdout
    back = f"{name}-back"
    run_in(root, "virtrbd", "restore", f"/var/backups/vm/rbd~{name}~s1.qcow2", f"rbd/{back}")
    try:
        assert sha256_of(storage, f"rbd/{back}") == sha256_of(storage, f"rbd/{name}@s1")
    finally:
        storage.remove_image(back)
    golden = images.create(8 * MiB, [(0, BOOT_SECTOR)], snapshot=None)
    snap = str(storage.make_golden(golden))
    clone = f"{golden}-clone"
    xml = make_domain_xml(lab.config, clone, f"rbd/{clone}", clone_of=snap, ephemeral=True)
    hook = "/etc/libvirt/hooks/qemu.d/virtrbd"
    run_in(root, hook, clone, "prepare", "begin", "-", input=xml)
    assert storage.image_exists(clone)
    assert any(clone in str(child) for child in storage.children(snap))
    run_in(root, hook, clone, "release", "end", "-", input=xml)
    assert not storage.image_exists(clone)
    log = (root / "var/log/virtrbd-hook.log").read_text()
    assert "ERROR" not in log and "WARNING" not in log, log


def test_hook_install_from_the_package_writes_the_hook_the_package_ships(configured):
    root = configured
    shipped = (root / "etc/libvirt/hooks/qemu.d/virtrbd").read_text()
    status = run_in(root, "virtrbd", "hook", "status").stdout
    assert "/usr/lib/python3/dist-packages" in status and "/etc/virtrbd/virtrbd.conf" in status, status
    run_in(root, "virtrbd", "hook", "install")
    installed = (root / "etc/libvirt/hooks/qemu.d/virtrbd").read_text()
    assert "PACKAGE_ROOT = '/usr/lib/python3/dist-packages'  # by virtrbd hook install" in installed
    assert "CONFIG = '/etc/virtrbd/virtrbd.conf'  # by virtrbd hook install" in installed
    assert "MODULE_DIRS = ['/usr/lib/python3/dist-packages'" in installed

    def settled(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith(("PACKAGE_ROOT =", "CONFIG =",
                                                                            "MODULE_DIRS ="))]

    assert settled(installed) == settled(shipped)
    assert run_in(root, "virtrbd", "hook", "status").stdout == status
