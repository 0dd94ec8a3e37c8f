"""What the Debian package installs beside the Python package, generated from the code (tools/gen-package-files)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from virtrbd import __version__, config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("package")
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen-package-files"), str(out)], check=True)
    return out


def test_the_package_version_is_the_projects_single_version():
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"virtrbd \({re.escape(__version__)}\) ", first), first


def test_the_conffile_names_every_setting_commented_out(generated):
    text = (generated / "virtrbd.conf").read_text()
    assert all(not line or line.startswith("#") for line in text.splitlines())
    for name, cls in config.SECTIONS.items():
        assert f"#[{name}]" in text
        for field in dataclasses.fields(cls):
            assert re.search(rf"^#{field.name} = ", text, re.M), field.name
    uncommented = "\n".join(line[1:] for line in text.splitlines() if line.startswith(("#[", "#monitors", "#keyring")))
    with pytest.raises(config.ConfigError, match="monitors"):          # as shipped it asks for the monitors
        config.parse(uncommented, Path("virtrbd.conf"))


def test_a_manual_page_per_command_group_that_man_renders_cleanly(generated):
    pages = sorted(p.name for p in (generated / "man").iterdir())
    assert "virtrbd.1" in pages and "virtrbd-backup.1" in pages and "virtrbd-backup-key.1" in pages
    for page in ("virtrbd.1", "virtrbd-backup-key.1"):
        shown = subprocess.run(["man", "--warnings", "-l", str(generated / "man" / page)], capture_output=True,
                               text=True, env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
        assert shown.returncode == 0 and shown.stderr == "", shown.stderr
        assert "EXIT STATUS" in shown.stdout
    assert "--signing" in subprocess.run(["man", "-l", str(generated / "man" / "virtrbd-backup-key.1")],
                                         capture_output=True, text=True).stdout


@pytest.mark.parametrize("line, expected", [
    ("virtrbd backup-k", "backup-key"),
    ("virtrbd backup-key ", "new show"),
    ("virtrbd backup-key new --s", "--signing"),
    ("virtrbd verify x --sig", "--signer"),
])
def test_bash_completes_commands_actions_and_options(generated, line, expected):
    words = line.split(" ")
    script = (f"source {generated / 'completions' / 'virtrbd'}; compopt() {{ :; }}; "
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; _virtrbd; "
              "echo ${COMPREPLY[@]}")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected.split()


def test_the_hook_is_the_checkouts_with_the_packages_places(generated):
    ours = (ROOT / "hooks" / "qemu").read_text()
    hook = (generated / "hooks" / "virtrbd").read_text()
    assert hook.startswith("#!/usr/bin/python3 -S\n")
    assert "PACKAGE_ROOT = '/usr/lib/python3/dist-packages'" in hook and "CONFIG = '/etc/virtrbd/virtrbd.conf'" in hook
    assert hook.replace("'/usr/lib/python3/dist-packages'", "None").replace("'/etc/virtrbd/virtrbd.conf'", "None") == ours
