"""The layering commands from the command line, on the lab's real cluster."""

from __future__ import annotations

import pytest

from ..cli_helpers import assert_one_line_error, virtrbd
from .layering_kit import names

__all__ = ["names"]          # a fixture the tests use by name


def test_cli_golden_clone_children_info_rm(lab, names, storage):
    base, child = names("cb"), names("cc")
    env = lab.env
    assert virtrbd("create", base, "--size", "4M", env=env).code == 0
    assert virtrbd("golden", "create", base, env=env).code == 0
    assert virtrbd("clone", f"{base}@golden", child, "--size", "8M", env=env).code == 0
    children = virtrbd("children", f"{base}@golden", "--json", env=env)
    assert children.code == 0 and f"rbd/{child}" in children.out
    info = virtrbd("info", child, env=env)
    assert f"parents    rbd/{base}@golden" in info.out
    refused = virtrbd("rm", base, env=env)
    assert_one_line_error(refused, 1, "has clones", f"rbd/{child}")
    assert virtrbd("rm", base, "--with-snapshots", "--flatten-children", env=env).code == 0


@pytest.mark.parametrize("args, code, words", [
    (("snap", "create", "rbd/../x@s"), 2, ["invalid image spec"]),
    (("snap", "create", "a@b@c"), 2, ["invalid image spec"]),
    (("snap", "create", "img"), 2, ["a snapshot is needed"]),
    (("clone", "img", "child"), 2, ["a snapshot is needed"]),
    (("clone", "rbd/none@s", "rbd/x y"), 2, ["invalid image name"]),
    (("rm", "nopool/x"), 1, ["pool nopool: does not exist"]),
    (("snap", "rm", "rbd/never-existed@s"), 1, ["image rbd/never-existed: does not exist"]),
    (("clone", "rbd/never-existed@s", "rbd/child-of-nothing"), 1, ["does not exist"]),
    (("flatten", "rbd/never-existed"), 1, ["does not exist"]),
    (("info", "rbd/img@snap"), 2, ["not a snapshot"]),
])
def test_cli_bad_input_is_one_line_and_changes_nothing(lab, storage, args, code, words):
    before = storage.list_images()
    assert_one_line_error(virtrbd(*args, env=lab.env), code, *words)
    assert storage.list_images() == before
