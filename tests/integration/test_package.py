"""`make deb`: the Debian package, built with Debian's tooling from the repository, judged by lintian and dpkg."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from virtrbd import __version__

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_DEPENDENCIES = ("python3-rados", "python3-rbd", "python3-libvirt", "python3-lxml", "python3-xxhash",
                       "libisal2", "libssl3")
#: libcrypto serves every cipher, key and signature through ctypes; these bindings are only the tests' judges
NOT_DEPENDENCIES = ("python3-cryptography",)


@pytest.fixture(scope="module")
def deb() -> Path:
    done = subprocess.run(["make", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    path = ROOT / f"virtrbd_{__version__}_all.deb"
    assert path.is_file()
    return path


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_lintian_finds_no_error_and_no_warning(deb):
    report = (ROOT / "build" / "deb" / "lintian.txt").read_text()
    assert not re.search(r"^[EW]: ", report, re.M), report


def test_it_installs_the_command_hook_conffile_manuals_completion_and_docs(deb):
    paths = {line.split()[-1].removeprefix(".") for line in dpkg_deb("-c", str(deb)).splitlines()}
    for path in ("/usr/bin/virtrbd", "/etc/libvirt/hooks/qemu.d/virtrbd", "/etc/virtrbd/virtrbd.conf",
                 "/usr/share/man/man1/virtrbd.1.gz", "/usr/share/man/man1/virtrbd-backup.1.gz",
                 "/usr/share/bash-completion/completions/virtrbd", "/usr/share/doc/virtrbd/README.md.gz",
                 "/usr/share/virtrbd/xml_templates/disk.xml",
                 "/usr/lib/python3/dist-packages/virtrbd/crc32c.py"):
        assert path in paths, path
    assert "/etc/libvirt/hooks/qemu" not in paths                      # an operator's own hook is theirs
    hook = [line for line in dpkg_deb("-c", str(deb)).splitlines() if line.endswith("/qemu.d/virtrbd")][0]
    assert hook.startswith("-rwxr-xr-x")
    assert set(dpkg_deb("-I", str(deb), "conffiles").split()) == {"/etc/libvirt/hooks/qemu.d/virtrbd",
                                                                  "/etc/virtrbd/virtrbd.conf"}


def test_it_depends_on_debians_packages_only(deb):
    fields = dpkg_deb("-f", str(deb), "Version", "Architecture", "Depends")
    assert f"Version: {__version__}" in fields and "Architecture: all" in fields
    depends = [re.split(r"[ (]", item.strip())[0] for item in fields.split("Depends:", 1)[1].split(",")]
    for name in DEBIAN_DEPENDENCIES:
        assert name in depends, name
    for name in NOT_DEPENDENCIES:
        assert name not in depends, name
    for name in depends:
        if name != "python3:any":
            assert subprocess.run(["apt-cache", "show", name], capture_output=True).returncode == 0, name
