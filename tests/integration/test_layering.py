"""Snapshots, golden images, clones, flatten and safe deletion on the lab's real cluster."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from virtrbd import Storage, errors
from virtrbd.layering import GOLDEN_KEY

from ..cli_helpers import virtrbd
from .layering_kit import digest, golden, names, read_all, write

MiB = 1 << 20

__all__ = ["names"]          # a fixture the tests use by name


# --- snapshots -------------------------------------------------------------------------

def test_snapshot_lifecycle(storage, names):
    image = names("img")
    storage.create_image(image, 8 * MiB)
    storage.create_snapshot(f"{image}@s1")
    with pytest.raises(errors.AlreadyExistsError, match=f"rbd/{image}@s1: already exists"):
        storage.create_snapshot(f"{image}@s1")
    [snap] = storage.list_snapshots(image)
    assert (snap.name, snap.size, snap.protected, snap.children, snap.origin) == ("s1", 8 * MiB, False, 0, "user")
    assert snap.timestamp is not None
    assert storage.protect_snapshot(f"{image}@s1") is True
    assert storage.protect_snapshot(f"{image}@s1") is False          # idempotent
    with pytest.raises(errors.BusyError, match="is protected"):
        storage.remove_snapshot(f"{image}@s1")
    assert storage.unprotect_snapshot(f"{image}@s1") is True
    assert storage.unprotect_snapshot(f"{image}@s1") is False
    storage.remove_snapshot(f"{image}@s1")
    assert storage.list_snapshots(image) == []


def test_force_removes_a_protected_snapshot_nothing_depends_on(storage, names):
    image = names("img")
    storage.create_image(image, MiB)
    storage.create_snapshot(f"{image}@s")
    storage.protect_snapshot(f"{image}@s")
    storage.remove_snapshot(f"{image}@s", force=True)
    assert storage.list_snapshots(image) == []


def test_missing_snapshot_and_image_are_named(storage, names):
    image = names("img")
    storage.create_image(image, MiB)
    with pytest.raises(errors.NotFoundError, match=fr"snapshot rbd/{image}@nope: does not exist"):
        storage.protect_snapshot(f"{image}@nope")
    with pytest.raises(errors.NotFoundError, match=r"image rbd/no-such-image: does not exist"):
        storage.create_snapshot("no-such-image@s")
    with pytest.raises(errors.NotFoundError, match="pool nopool: does not exist"):
        storage.list_snapshots("nopool/x")


def test_rollback_restores_the_data_byte_exactly(storage, names):
    image = names("img")
    storage.create_image(image, 12 * MiB + 1)
    write(storage, image, 0, b"A" * MiB)
    write(storage, image, 12 * MiB + 1 - 12, b"end-of-image")
    before = digest(storage, image)
    storage.create_snapshot(f"{image}@before")
    write(storage, image, 4096, b"B" * (3 * MiB))
    write(storage, image, 9 * MiB, b"C" * 17)
    assert digest(storage, image) != before
    storage.rollback_snapshot(f"{image}@before")
    assert digest(storage, image) == before == digest(storage, f"{image}@before")


def test_rollback_is_refused_while_a_client_has_the_image_open(storage, names, lab):
    image = names("img")
    storage.create_image(image, MiB)
    storage.create_snapshot(f"{image}@s")
    with Storage(lab.config) as other, other.cluster.image("rbd", image) as held:
        held.write(b"x", 0)      # a writer, like a running VM
        with pytest.raises(errors.BusyError, match=fr"image rbd/{image}: is open by 1 client"):
            storage.rollback_snapshot(f"{image}@s")
        with pytest.raises(errors.BusyError, match="is open by 1 client"):
            storage.remove_image(image, with_snapshots=True)
    storage.rollback_snapshot(f"{image}@s")


def test_forced_rollback_while_a_client_has_it_open(storage, names, lab):
    image = names("img")
    storage.create_image(image, MiB)
    storage.create_snapshot(f"{image}@s")
    with Storage(lab.config) as other, other.cluster.image("rbd", image):
        # open but idle: it holds no exclusive lock, so a forced rollback goes through
        storage.rollback_snapshot(f"{image}@s", force=True)
    with Storage(lab.config) as other, other.cluster.image("rbd", image) as held:
        held.write(b"y", 0)      # a writer keeps the exclusive lock, like a running VM
        with pytest.raises(errors.BusyError, match="holds its exclusive lock"):
            storage.rollback_snapshot(f"{image}@s", force=True)
    assert read_all(storage, image)[:1] == b"y"


# --- golden images and clones -----------------------------------------------------------

def test_golden_image_is_a_protected_recorded_snapshot(storage, names):
    spec = golden(storage, names)
    image = spec.split("/")[1].split("@")[0]
    assert spec.endswith("@golden")
    [snap] = storage.list_snapshots(image)
    assert snap.protected and snap.origin == "golden"
    assert storage.info(image).golden_snapshot == "golden"
    assert str(storage.make_golden(image)) == spec      # idempotent


def test_clone_is_copy_on_write_and_can_grow(storage, names):
    parent = golden(storage, names)
    child = names("child")
    result = storage.clone(parent, child, size=64 * MiB)
    assert (result.depth, result.flattened) == (1, False)
    info = storage.info(child)
    assert info.size == 64 * MiB
    assert [str(p) for p in info.parent_chain] == [parent]
    assert info.golden_snapshot is None          # the parent's record is not inherited
    assert read_all(storage, child)[:18] == b"golden boot sector"
    assert [str(d.image) for d in storage.children(parent)] == [f"rbd/{child}"]


def test_clone_cannot_shrink_below_its_parent(storage, names):
    parent = golden(storage, names)
    child = names("child")
    with pytest.raises(errors.UsageError, match="smaller than its parent"):
        storage.clone(parent, child, size=MiB)
    assert not storage.image_exists(child)


def test_flatten_on_request_and_later(storage, names):
    parent = golden(storage, names)
    flat, later = names("flat"), names("later")
    assert storage.clone(parent, flat, flatten=True).flattened
    assert storage.info(flat).parent_chain == ()
    storage.clone(parent, later)
    assert storage.flatten(later) is True
    assert storage.flatten(later) is False
    assert storage.children(parent) == []
    assert read_all(storage, later)[:18] == b"golden boot sector"


def test_six_deep_chain_triggers_the_depth_limit(storage, names):
    parent = golden(storage, names)
    results = []
    for level in range(1, 7):
        child = names(f"d{level}")
        results.append(storage.clone(parent, child))
        storage.create_snapshot(f"{child}@s")
        parent = f"rbd/{child}@s"
    assert [(r.depth, r.flattened) for r in results] == [(1, False), (2, False), (3, False), (4, False),
                                                         (5, False), (0, True)]
    assert "6 ancestors, more than max_clone_depth 5" in results[-1].note
    assert storage.info(results[-1].image).parent_chain == ()
    assert len(storage.info(results[-2].image).parent_chain) == 5
    assert read_all(storage, str(results[-1].image).split("/")[1])[:18] == b"golden boot sector"


def test_depth_limit_comes_from_the_config(lab, names, storage):
    conf = dataclasses.replace(lab.config, layering=dataclasses.replace(lab.config.layering, max_clone_depth=1))
    parent = golden(storage, names)
    first, second = names("a"), names("b")
    with Storage(conf) as shallow:
        assert shallow.clone(parent, first).depth == 1
        shallow.create_snapshot(f"{first}@s")
        result = shallow.clone(f"{first}@s", second)
    assert result.flattened and "max_clone_depth 1" in result.note
    assert storage.info(second).parent_chain == ()


def test_twenty_concurrent_clones_of_one_unprotected_snapshot_all_succeed(lab, storage, names):
    """Clone format v1 (this lab's default) needs protection: 20 agents race to protect and clone."""
    base = names("base")
    storage.create_image(base, 8 * MiB)
    storage.create_snapshot(f"{base}@s")
    children = [names(f"c{i}") for i in range(20)]
    barrier = threading.Barrier(len(children))
    failures = []

    def agent(child: str) -> None:
        try:
            with Storage(lab.config) as own:
                barrier.wait()
                own.clone(f"{base}@s", child)
        except Exception as exc:  # collected and asserted below
            failures.append(f"{child}: {exc!r}")

    threads = [threading.Thread(target=agent, args=(c,)) for c in children]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sorted(str(d.image) for d in storage.children(f"{base}@s")) == sorted(f"rbd/{c}" for c in children)
    assert storage.list_snapshots(base)[0].protected


def test_clone_many_makes_a_fleet_that_opens(storage, names):
    parent = golden(storage, names)
    fleet = [names(f"vm{i}") for i in range(30)]
    results = storage.clone_many(parent, fleet, size=32 * MiB)
    assert [str(r.image) for r in results] == [f"rbd/{vm}" for vm in fleet]
    for vm in fleet:
        assert read_all(storage, vm)[:18] == b"golden boot sector"
        assert storage.image_size(vm) == 32 * MiB
    with pytest.raises(errors.AlreadyExistsError, match=r"already exists \((1 of 2 clones made|0 of 2 clones made; 1 not tried)\)"):
        storage.clone_many(parent, [fleet[0], names("extra")])


def test_cli_clones_several_children(lab, storage, names):
    parent = golden(storage, names)
    kids = [names("x1"), names("x2"), names("x3")]
    result = virtrbd("clone", parent, *kids, "--json", env=lab.env)
    assert result.code == 0
    assert sorted(str(d.image) for d in storage.children(parent)) == sorted(f"rbd/{k}" for k in kids)


def test_clone_v2_leaves_the_snapshot_unprotected(lab, storage, names):
    conf = dataclasses.replace(lab.config, layering=dataclasses.replace(lab.config.layering, clone_format="2"))
    base, child = names("base"), names("child")
    storage.create_image(base, MiB)
    storage.create_snapshot(f"{base}@s")
    with Storage(conf) as v2:
        v2.clone(f"{base}@s", child)
    assert not storage.list_snapshots(base)[0].protected
    # v2 would let librbd move the snapshot to the trash; virtrbd refuses and names the clone
    with pytest.raises(errors.HasDependentsError, match=f"rbd/{child}"):
        storage.remove_snapshot(f"{base}@s")


# --- safe deletion --------------------------------------------------------------------------

def test_refused_deletion_lists_every_dependent_and_changes_nothing(storage, names):
    parent = golden(storage, names)
    base = parent.split("/")[1].split("@")[0]
    kids = [names("k1"), names("k2")]
    for kid in kids:
        storage.clone(parent, kid)
    storage.create_snapshot(f"{base}@extra")
    with pytest.raises(errors.HasDependentsError) as info:
        storage.remove_image(base)
    message = str(info.value)
    assert all(f"rbd/{kid}" in message for kid in kids) and "on snapshot golden" in message
    with pytest.raises(errors.HasDependentsError):
        storage.remove_image(base, with_snapshots=True)
    assert len(storage.list_snapshots(base)) == 2 and len(storage.children(base)) == 2


def test_refused_deletion_names_the_snapshots(storage, names):
    image = names("img")
    storage.create_image(image, MiB)
    storage.create_snapshot(f"{image}@a")
    storage.create_snapshot(f"{image}@b")
    storage.protect_snapshot(f"{image}@b")
    with pytest.raises(errors.HasSnapshotsError, match=r"has snapshots: a, b \(protected\)"):
        storage.remove_image(image)
    result = storage.remove_image(image, with_snapshots=True)
    assert result.snapshots_removed == ("a", "b")
    assert not storage.image_exists(image)


def test_flatten_children_then_remove(storage, names):
    parent = golden(storage, names)
    base = parent.split("/")[1].split("@")[0]
    kid = names("kid")
    storage.clone(parent, kid)
    result = storage.remove_image(base, with_snapshots=True, flatten_children=True)
    assert [str(c) for c in result.children_flattened] == [f"rbd/{kid}"]
    assert not storage.image_exists(base)
    assert storage.info(kid).parent_chain == ()
    assert read_all(storage, kid)[:18] == b"golden boot sector"


def test_trash_moves_instead_of_deleting(storage, names):
    image = names("img")
    storage.create_image(image, MiB)
    assert storage.remove_image(image, trash=True).trashed
    assert not storage.image_exists(image)
    with storage.cluster.ioctx("rbd") as ioctx:
        trashed = [t for t in storage.cluster.rbd.RBD().trash_list(ioctx) if t["name"] == image]
        assert len(trashed) == 1
        storage.cluster.rbd.RBD().trash_remove(ioctx, trashed[0]["id"])


def test_a_clone_in_the_trash_still_counts_as_a_dependent(storage, names):
    parent = golden(storage, names)
    base = parent.split("/")[1].split("@")[0]
    kid = names("kid")
    storage.clone(parent, kid)
    storage.remove_image(kid, trash=True)
    with pytest.raises(errors.HasDependentsError, match="in the RBD trash"):
        storage.remove_image(base, with_snapshots=True)
    storage.remove_image(base, with_snapshots=True, flatten_children=True)
    with storage.cluster.ioctx("rbd") as ioctx:
        for entry in storage.cluster.rbd.RBD().trash_list(ioctx):
            if entry["name"] == kid:
                storage.cluster.rbd.RBD().trash_remove(ioctx, entry["id"])


def test_missing_image_deletion_is_not_found(storage):
    with pytest.raises(errors.NotFoundError, match="image rbd/never-existed: does not exist"):
        storage.remove_image("never-existed")


# --- libvirt interplay ------------------------------------------------------------------------

def test_libvirt_vol_clone_snapshots_are_recognised(lab, storage, names):
    from virtrbd.libvirt.host import Host
    source, copy = names("src"), names("virshclone")
    storage.create_image(source, 4 * MiB)
    with Host(lab.config.libvirt.uri) as host:
        pool = host.find_pool(lab.libvirt_pool)
        pool.refresh(0)
        volume = pool.storageVolLookupByName(source)
        xml = (f"<volume><name>{copy}</name><capacity unit='bytes'>{4 * MiB}</capacity>"
               f"<target><format type='raw'/></target></volume>")
        pool.createXMLFrom(xml, volume, 0)
    [snap] = storage.list_snapshots(source)
    assert snap.origin == "libvirt" and snap.name.startswith("libvirt-") and snap.protected
    assert [str(d.image) for d in storage.children(source)] == [f"rbd/{copy}"]
    with pytest.raises(errors.HasDependentsError, match=f"rbd/{copy}"):
        storage.remove_image(source, with_snapshots=True)
    storage.remove_image(source, with_snapshots=True, flatten_children=True)


def test_images_made_by_the_shim_appear_in_the_libvirt_pool(lab, storage, names):
    from virtrbd.libvirt.host import Host
    parent = golden(storage, names)
    child = names("child")
    storage.clone(parent, child, size=32 * MiB)
    with Host(lab.config.libvirt.uri) as host:
        pool = host.find_pool(lab.libvirt_pool)
        pool.refresh(0)
        assert pool.storageVolLookupByName(child).info()[1] == 32 * MiB


def test_golden_metadata_names_the_image_it_was_made_for(storage, names):
    spec = golden(storage, names)
    image = spec.split("/")[1].split("@")[0]
    with storage.cluster.image("rbd", image, read_only=True) as img:
        assert f'"image_id": "{img.id()}"' in img.metadata_get(GOLDEN_KEY)
