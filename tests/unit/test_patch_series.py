"""patches/libvirt-9.0: a series `git am` takes as it is, in libvirt's style (no build needed)."""

import re
import subprocess
from pathlib import Path

import pytest

SERIES = Path(__file__).resolve().parents[2] / "patches" / "libvirt-9.0"
PATCHES = sorted(SERIES.glob("*.patch"))


def series_names() -> list[str]:
    lines = (SERIES / "series").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_series_file_lists_every_patch_in_order():
    assert PATCHES, "no patches"
    assert series_names() == [p.name for p in PATCHES]


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name[:4])
def test_each_patch_is_a_signed_git_format_patch_of_the_rbd_backend(patch):
    text = patch.read_text()
    number = int(patch.name[:4])
    assert text.startswith("From 0000000000000000000000000000000000000000 ")
    assert re.search(rf"^Subject: \[PATCH {number}/{len(PATCHES)}\] storage: rbd: \S", text, re.M)
    assert re.search(r"^Signed-off-by: .+ <.+@.+>$", text, re.M)
    touched = re.findall(r"^diff --git a/(\S+) b/", text, re.M)
    assert touched == ["src/storage/storage_backend_rbd.c"]


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name[:4])
def test_added_code_follows_libvirts_whitespace_rules(patch):
    added = [line[1:] for line in patch.read_text().splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    assert not [line for line in added if "\t" in line], "tabs"
    assert not [line for line in added if line != line.rstrip()], "trailing whitespace"


def test_the_build_script_refuses_unknown_arguments():
    script = SERIES.parents[1] / "tools" / "build-libvirt-rbd"
    done = subprocess.run([str(script), "--bogus"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: ")
