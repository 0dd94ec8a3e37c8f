"""The layers written down in setup.cfg are enforced: an import that breaks them fails make lint, named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is installed by make setup")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts of setup.cfg, run on the package as it stands in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), str(REPO / "setup.cfg"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def tree_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package in which ``module`` (a path under virtrbd/) also says ``line``."""
    shutil.copytree(REPO / "virtrbd", tmp_path / "virtrbd", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "virtrbd" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    return tmp_path


def test_the_package_keeps_its_layers():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("ceph/translate.py", "from .. import cli  # noqa", "virtrbd.ceph.translate -> virtrbd.cli"),
    ("xml/common.py", "from ..ceph import Cluster  # noqa", "virtrbd.xml.common -> virtrbd.ceph"),
    ("hook.py", "from .libvirt import host  # noqa", "virtrbd.hook -> virtrbd.libvirt.host"),
    ("backup/formats/raw.py", "import rbd  # noqa", "virtrbd.backup.formats.raw -> rbd"),
    ("layering/base.py", "from . import clones  # noqa", "virtrbd.layering.base -> virtrbd.layering.clones"),
])
def test_an_import_against_the_layers_fails_naming_it(tmp_path, module, line, broken):
    done = lint_imports(tree_with(tmp_path, module, line))
    assert done.returncode != 0
    assert broken in done.stdout, done.stdout[-2000:]
