"""The unit tests' fakes stand for the real classes: the same methods, the same parameters."""

from __future__ import annotations

import inspect

import pytest
import rbd

from virtrbd.ceph import Cluster, RbdImage

from .fakes import FakeCluster, FakeImage


def public_methods(cls) -> dict:
    return {name: member for name, member in vars(cls).items() if callable(member) and not name.startswith("_")}


def parameters(function) -> list[str]:
    return [p.name for p in inspect.signature(inspect.unwrap(function)).parameters.values()]


def test_every_method_of_the_fake_cluster_is_clusters_own_with_its_parameters():
    test_side = {"add", "names", "on"}
    real = public_methods(Cluster)
    for name, method in public_methods(FakeCluster).items():
        if name in test_side:
            continue
        assert name in real, f"Cluster has no {name}"
        assert parameters(method) == parameters(real[name]), name


@pytest.mark.parametrize("name", sorted(public_methods(FakeImage)))
def test_every_method_of_the_fake_image_is_the_bindings_own(name):
    assert callable(getattr(rbd.Image, name, None)), f"rbd.Image has no {name}"
    assert name in vars(RbdImage), f"the RbdImage Protocol does not list {name}"
    assert parameters(getattr(FakeImage, name)) == parameters(getattr(RbdImage, name)), name
