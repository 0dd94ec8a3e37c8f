"""The Debian package in a clean Debian 12 root: installed with apt, used against the lab, purged.

The root is made by debootstrap from Debian's mirror (minbase), the package
installed into it with apt (its dependencies from Debian, no recommends), and
everything run inside it with chroot.  First on the machine's network, against
the machine's lab on 127.0.0.1; then with what the package recommends and
suggests installed, a lab of the root's own and the demo run from the package,
in a network namespace of the root's (the same ports, undisturbed).  An
operator's own ``/etc/libvirt/hooks/qemu`` is there before the install and must
be there, unchanged, after the purge.
"""

from __future__ import annotations

import configparser
import hashlib
import json
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
from .package_root import DebianRoot, machine_state

ROOT = Path(__file__).resolve().parents[2]
DEB = f"virtrbd_{__version__}_all.deb"
OPERATORS_HOOK = "#!/bin/sh\n# the operator's own qemu hook\nexit 0\n"


@pytest.fixture(scope="module")
def root():
    """A fresh Debian 12 root with the package installed, removed afterwards."""
    built = subprocess.run(["make", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    subprocess.run([str(ROOT / "tools" / "install-debian-packages"), "debootstrap", "iproute2"], check=True)
    root = DebianRoot(Path(f"/var/tmp/virtrbd-package-root-{uuid.uuid4().hex[:8]}"))
    machine = machine_state()
    try:
        root.create()
        hook = root.path / "etc/libvirt/hooks/qemu"
        hook.parent.mkdir(parents=True)
        hook.write_text(OPERATORS_HOOK)
        hook.chmod(0o755)
        shutil.copy(ROOT / DEB, root.path / "tmp")
        root.run("apt-get", "update", "-qq")
        root.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", f"/tmp/{DEB}", "man-db")
        yield root
    finally:
        root.remove()
    assert machine_state() == machine, "the root's packages changed the machine"


@pytest.fixture
def configured(root, lab):
    """The lab's config as the operator would write it into the installed conffile, with its keyring."""
    keyring = root.path / "etc/ceph/lab.keyring"
    keyring.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(lab.config.ceph.keyring, keyring)
    keyring.chmod(0o600)
    conf = configparser.ConfigParser()
    conf.read_string(lab.lab.conf_file.read_text())
    conf["ceph"]["keyring"] = "/etc/ceph/lab.keyring"
    conf["hook"] = {"log": "/var/log/virtrbd-hook.log"}
    with open(root.path / "etc/virtrbd/virtrbd.conf", "w") as out:
        conf.write(out)
    return root


def test_the_command_and_its_manual_work_from_the_package(root):
    assert root.run("virtrbd", "--version").stdout.strip() == f"virtrbd {__version__}"
    assert re.search(r"NAME\s+virtrbd\s+-\s+manage\s+Ceph\s+RBD", root.run("man", "-P", "cat", "virtrbd").stdout)
    assert "--signing" in root.run("man", "-P", "cat", "virtrbd-backup-key").stdout
    assert (root.path / "usr/share/bash-completion/completions/virtrbd").is_file()
    assert (root.path / "etc/libvirt/hooks/qemu").read_text() == OPERATORS_HOOK


def test_config_check_a_backup_round_trip_and_the_hook_against_the_lab(configured, lab, storage, images):
    root = configured
    checked = root.run("virtrbd", "config", "check")
    assert checked.stdout.startswith("/etc/virtrbd/virtrbd.conf: OK"), checked.stdout
    name = images.create(16 * MiB, scattered_writes(16 * MiB, seed=91))
    root.run("mkdir", "-p", "/var/backups/vm")
    made = root.run("virtrbd", "backup", f"rbd/{name}@s1", "/var/backups/vm", "--format", "qcow2")
    assert "backed up" in made.stdout
    back = f"{name}-back"
    root.run("virtrbd", "restore", f"/var/backups/vm/rbd~{name}~s1.qcow2", f"rbd/{back}")
    try:
        assert sha256_of(storage, f"rbd/{back}") == sha256_of(storage, f"rbd/{name}@s1")
    finally:
        storage.remove_image(back)
    golden = images.create(8 * MiB, [(0, BOOT_SECTOR)], snapshot=None)
    snap = str(storage.make_golden(golden))
    clone = f"{golden}-clone"
    xml = make_domain_xml(lab.config, clone, f"rbd/{clone}", clone_of=snap, ephemeral=True)
    hook = "/etc/libvirt/hooks/qemu.d/virtrbd"
    root.run(hook, clone, "prepare", "begin", "-", input=xml)
    assert storage.image_exists(clone)
    assert any(clone in str(child) for child in storage.children(snap))
    root.run(hook, clone, "release", "end", "-", input=xml)
    assert not storage.image_exists(clone)
    log = (root.path / "var/log/virtrbd-hook.log").read_text()
    assert "ERROR" not in log and "WARNING" not in log, log


def test_hook_install_from_the_package_writes_the_hook_the_package_ships(configured):
    root = configured
    shipped = (root.path / "etc/libvirt/hooks/qemu.d/virtrbd").read_text()
    status = root.run("virtrbd", "hook", "status").stdout
    assert "/usr/lib/python3/dist-packages" in status and "/etc/virtrbd/virtrbd.conf" in status, status
    root.run("virtrbd", "hook", "install")
    installed = (root.path / "etc/libvirt/hooks/qemu.d/virtrbd").read_text()
    assert "PACKAGE_ROOT = '/usr/lib/python3/dist-packages'  # by virtrbd hook install" in installed
    assert "CONFIG = '/etc/virtrbd/virtrbd.conf'  # by virtrbd hook install" in installed
    assert "MODULE_DIRS = ['/usr/lib/python3/dist-packages'" in installed

    def settled(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith(("PACKAGE_ROOT =", "CONFIG =",
                                                                            "MODULE_DIRS ="))]

    assert settled(installed) == settled(shipped)
    assert root.run("virtrbd", "hook", "status").stdout == status


def package_files(root: DebianRoot) -> dict[str, str]:
    """Each file the package installed, by its SHA-256 (the hook, a conffile, included)."""
    listed = root.run("dpkg", "-L", "virtrbd").stdout.splitlines()
    return {path: hashlib.sha256(root.inside(path).read_bytes()).hexdigest()
            for path in listed if root.inside(path).is_file()}


def module_files(root: DebianRoot) -> list[str]:
    """Every file and folder under the installed Python package (one more would be written by a run)."""
    return sorted(str(path) for path in root.inside("/usr/lib/python3/dist-packages/virtrbd").rglob("*"))


def related(root: DebianRoot, field: str) -> list[str]:
    """The packages the .deb names in ``field`` (the first of alternatives, without versions)."""
    value = subprocess.run(["dpkg-deb", "-f", str(root.path / "tmp" / DEB), field], capture_output=True,
                           text=True, check=True).stdout
    return [re.split(r"[\s(|]", item.strip())[0] for item in value.split(",") if item.strip()]


def test_the_lab_and_the_demo_run_from_the_package_their_state_outside_usr(root):
    """The lab needs no checkout: the packages it runs are those the package recommends and suggests, its state
    goes to /var/tmp, and the demo (Linux guests, a live migration to host b and back, instant restore,
    encrypted backups) passes every step; the package's files are as they were installed."""
    root.run("apt-get", "install", "-y", "-qq", "--no-install-recommends",
             *related(root, "Recommends"), *related(root, "Suggests"))
    installed = package_files(root)
    python_files = module_files(root)
    root.run("virtrbd", "lab", "guest", "build")       # on the machine's network: the kit comes from Debian
    root.isolate()
    try:
        up = root.run("virtrbd", "lab", "up", "--with-libvirt", isolated=True)
        assert "lab up at /var/tmp/virtrbd-lab" in up.stdout, up.stdout
        assert json.loads((root.path / "var/tmp/virtrbd-lab/state.json").read_text())["daemons"]
        demo = root.run("sh", "-c", "cd /root && virtrbd demo --domains 12 --batch 3 --json", isolated=True,
                        check=False)
        report = json.loads(demo.stdout)
        failed = [f"{step['name']}: {step['detail']}" for step in report["steps"] if not step["ok"]]
        assert demo.returncode == 0 and report["ok"] and not failed, failed
        assert any(step["name"].startswith("live migration") for step in report["steps"])
        assert any(step["name"].startswith("instant restore") for step in report["steps"])
    finally:
        down = root.run("virtrbd", "lab", "down", isolated=True, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert root.processes() == []
    assert package_files(root) == installed
    assert module_files(root) == python_files


def test_purge_leaves_no_file_of_the_package_and_the_operators_hook_as_it_was(configured):
    root = configured
    files = [Path(line) for line in root.run("dpkg", "-L", "virtrbd").stdout.splitlines()]
    assert Path("/etc/virtrbd/virtrbd.conf") in files and Path("/etc/libvirt/hooks/qemu.d/virtrbd") in files
    root.run("apt-get", "purge", "-y", "-qq", "virtrbd")
    left = [path for path in files if root.inside(path).is_file()]
    assert left == []
    assert not (root.path / "etc/virtrbd").exists()
    assert (root.path / "etc/libvirt/hooks/qemu").read_text() == OPERATORS_HOOK
    assert (root.path / "etc/ceph/lab.keyring").exists()                 # the operator's own files stay
