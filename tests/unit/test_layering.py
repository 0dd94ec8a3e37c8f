"""The layering shim against fakes autospecced from the real rbd binding: refusals, races, rollbacks of
half-made work, and the translation of every librbd exception it can meet."""

from __future__ import annotations

import errno

import pytest

from virtrbd import errors
from virtrbd.ceph import Cluster
from virtrbd.layering import Layering
from virtrbd.spec import ImageSpec

G = ImageSpec("rbd", "gold", "golden")
CHILD = ImageSpec("rbd", "child")


@pytest.fixture
def image(fake_rbd):
    """The one image every rbd.Image(...) call opens, with one snapshot and no parent."""
    img = fake_rbd.Image.return_value
    img.list_snaps.return_value = [{"id": 7, "size": 1 << 30, "name": "golden", "namespace": 0}]
    img.is_protected_snap.return_value = True
    img.get_parent_image_spec.side_effect = fake_rbd.ImageNotFound("no parent", errno=errno.ENOENT)
    img.size.return_value = 1 << 30
    img.list_children2.return_value = []
    img.watchers_list.return_value = []
    img.snap_get_namespace_type.return_value = 0
    img.snap_get_name.return_value = "golden"
    img.metadata_get.side_effect = KeyError("none")
    img.id.return_value = "1a2b3c"
    return img


@pytest.fixture
def layering(conf, fake_rados, fake_rbd, image):
    cluster = Cluster(conf, rados_module=fake_rados, rbd_module=fake_rbd).connect()
    return Layering(cluster, max_clone_depth=5)


def rbd_api(fake_rbd):
    return fake_rbd.RBD.return_value


# --- protect is idempotent and race-proof ---------------------------------------------------

def test_protect_of_a_protected_snapshot_does_nothing(layering, image):
    assert layering.protect_snapshot(G) is False
    image.protect_snap.assert_not_called()


def test_protect_race_lost_to_another_agent_is_success(layering, image, fake_rbd):
    image.is_protected_snap.side_effect = [False, True]
    image.protect_snap.side_effect = fake_rbd.ImageBusy("busy", errno=errno.EBUSY)
    assert layering.protect_snapshot(G) is False


def test_protect_busy_for_another_reason_is_reported(layering, image, fake_rbd):
    image.is_protected_snap.return_value = False
    image.protect_snap.side_effect = fake_rbd.ImageBusy("busy", errno=errno.EBUSY)
    with pytest.raises(errors.BusyError, match="protecting snapshot rbd/gold@golden: is in use"):
        layering.protect_snapshot(G)


def test_unprotect_refuses_while_clones_depend(layering, image):
    image.list_children2.return_value = [{"pool": "rbd", "image": "kid", "id": "1", "trash": False}]
    with pytest.raises(errors.HasDependentsError, match="has clones: rbd/kid"):
        layering.unprotect_snapshot(G)
    image.unprotect_snap.assert_not_called()


# --- clones ----------------------------------------------------------------------------------

def test_clone_v1_protects_an_unprotected_snapshot_then_retries(layering, image, fake_rbd):
    image.is_protected_snap.return_value = False
    rbd_api(fake_rbd).clone.side_effect = [fake_rbd.InvalidArgument("needs protection", errno=errno.EINVAL), None]
    result = layering.clone(G, CHILD)
    image.protect_snap.assert_called_once_with("golden")
    assert rbd_api(fake_rbd).clone.call_count == 2
    assert (result.depth, result.flattened) == (1, False)


def test_clone_einval_on_a_protected_snapshot_is_not_retried(layering, fake_rbd):
    rbd_api(fake_rbd).clone.side_effect = fake_rbd.InvalidArgument("bad", errno=errno.EINVAL)
    with pytest.raises(errors.CephError, match="cloning rbd/gold@golden to rbd/child: invalid argument"):
        layering.clone(G, CHILD)
    assert rbd_api(fake_rbd).clone.call_count == 1


def test_clone_that_fails_after_creation_is_removed_again(layering, image, fake_rbd):
    image.resize.side_effect = fake_rbd.NoSpace("full", errno=errno.ENOSPC)
    with pytest.raises(errors.NoSpaceError, match="resizing clone rbd/child"):
        layering.clone(G, CHILD, size=2 << 30)
    args = rbd_api(fake_rbd).remove.call_args.args
    assert args[1] == "child"


def test_clone_interrupted_after_creation_is_removed_again(layering, image, fake_rbd):
    image.flatten.side_effect = KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        layering.clone(G, CHILD, flatten=True)
    assert rbd_api(fake_rbd).remove.call_args.args[1] == "child"


def test_clone_smaller_than_its_parent_is_refused_before_cloning(layering, fake_rbd):
    with pytest.raises(errors.UsageError, match="smaller than its parent"):
        layering.clone(G, CHILD, size=1 << 20)
    rbd_api(fake_rbd).clone.assert_not_called()


def test_clone_beyond_the_depth_limit_is_flattened(layering, image, fake_rbd):
    layering.max_clone_depth = 0
    result = layering.clone(G, CHILD)
    image.flatten.assert_called_once_with()
    assert result.flattened and "max_clone_depth 0" in result.note


def test_parent_facts_are_read_once_per_snapshot(layering, fake_rbd):
    layering.clone(G, CHILD)
    opened = fake_rbd.Image.call_count
    layering.clone(G, ImageSpec("rbd", "child2"))
    # a plain clone opens no image at all once the parent snapshot's facts are known
    assert opened == 1
    assert fake_rbd.Image.call_count == opened


def test_clone_many_makes_every_clone_and_keeps_the_order(layering, fake_rbd):
    children = [ImageSpec("rbd", f"vm{i}") for i in range(12)]
    results = layering.clone_many(G, children, workers=4)
    assert [r.image for r in results] == children
    assert sorted(c.args[4] for c in rbd_api(fake_rbd).clone.call_args_list) == sorted(c.image for c in children)


def test_clone_many_reports_how_many_were_made_when_one_fails(layering, fake_rbd):
    def clone(p_ioctx, p_name, p_snap, c_ioctx, c_name):
        if c_name == "vm3":
            raise fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    rbd_api(fake_rbd).clone.side_effect = clone
    with pytest.raises(errors.AlreadyExistsError,
                       match=r"rbd/vm3: already exists \(3 of 6 clones made; 2 not tried\)"):
        layering.clone_many(G, [ImageSpec("rbd", f"vm{i}") for i in range(6)], workers=1)


def test_clone_many_refuses_duplicate_names(layering, fake_rbd):
    with pytest.raises(errors.UsageError, match="rbd/vm1 twice"):
        layering.clone_many(G, [ImageSpec("rbd", "vm1"), ImageSpec("rbd", "vm1")])
    rbd_api(fake_rbd).clone.assert_not_called()


def test_clone_needs_a_snapshot(layering):
    with pytest.raises(errors.InvalidSpecError, match="clone from a snapshot"):
        layering.clone(ImageSpec("rbd", "gold"), CHILD)


# --- safe deletion -----------------------------------------------------------------------------

def test_remove_refuses_an_image_in_use_and_touches_nothing(layering, image, fake_rbd):
    image.watchers_list.return_value = [{"addr": "10.0.0.9:0/1", "id": 1, "cookie": 2}]
    with pytest.raises(errors.BusyError, match=r"is open by 1 client\(s\) \(10.0.0.9:0/1\)"):
        layering.remove(ImageSpec("rbd", "gold"), with_snapshots=True, flatten_children=True)
    rbd_api(fake_rbd).remove.assert_not_called()
    image.remove_snap.assert_not_called()
    image.flatten.assert_not_called()


def test_remove_names_clones_before_snapshots(layering, image, fake_rbd):
    image.list_children2.return_value = [{"pool": "rbd", "image": "kid", "id": "1", "trash": True}]
    with pytest.raises(errors.HasDependentsError, match=r"rbd/kid \(in the RBD trash\) \(on snapshot golden\)"):
        layering.remove(ImageSpec("rbd", "gold"), with_snapshots=True)
    rbd_api(fake_rbd).remove.assert_not_called()


def test_remove_names_snapshots_and_their_origin(layering, image):
    image.list_snaps.return_value = [{"id": 1, "size": 1, "name": "libvirt-1234", "namespace": 0},
                                     {"id": 2, "size": 1, "name": "daily", "namespace": 0}]
    image.is_protected_snap.side_effect = lambda name: name.startswith("libvirt")
    with pytest.raises(errors.HasSnapshotsError,
                       match=r"libvirt-1234 \(protected, made by libvirt's vol-clone\), daily"):
        layering.remove(ImageSpec("rbd", "gold"))


def test_remove_with_snapshots_unprotects_removes_then_deletes(layering, image, fake_rbd):
    result = layering.remove(ImageSpec("rbd", "gold"), with_snapshots=True)
    image.unprotect_snap.assert_called_once_with("golden")
    image.remove_snap.assert_called_once_with("golden")
    assert rbd_api(fake_rbd).remove.call_args.args[1] == "gold"
    assert result.snapshots_removed == ("golden",)


def test_remove_to_trash(layering, image, fake_rbd):
    image.list_snaps.return_value = []
    assert layering.remove(ImageSpec("rbd", "gold"), trash=True).trashed
    assert rbd_api(fake_rbd).trash_move.call_args.args[1:] == ("gold", 0)
    rbd_api(fake_rbd).remove.assert_not_called()


def test_snapshots_in_the_trash_namespace_are_not_listed_but_their_clones_count(layering, image):
    image.list_snaps.return_value = [{"id": 9, "size": 1, "name": "0d1e-uuid", "namespace": 2}]
    image.snap_get_namespace_type.return_value = 2
    image.snap_get_trash_namespace.return_value = {"original_name": "old"}
    image.list_children2.return_value = [{"pool": "rbd", "image": "kid", "id": "1", "trash": False}]
    assert layering.list_snapshots(ImageSpec("rbd", "gold")) == []
    with pytest.raises(errors.HasDependentsError, match=r"rbd/kid \(on snapshot old\)"):
        layering.remove(ImageSpec("rbd", "gold"))


def test_rollback_refuses_while_open(layering, image):
    image.watchers_list.return_value = [{"addr": "a", "id": 1, "cookie": 1}]
    with pytest.raises(errors.BusyError, match="is open by 1 client"):
        layering.rollback(G)
    image.rollback_to_snap.assert_not_called()


def test_rollback_blocked_by_a_lock_holder_says_so(layering, image, fake_rbd):
    image.rollback_to_snap.side_effect = fake_rbd.ReadOnlyImage("ro", errno=errno.EROFS)
    with pytest.raises(errors.BusyError, match="holds its exclusive lock"):
        layering.rollback(G, force=True)


# --- every librbd exception the shim meets leaves as virtrbd.errors ----------------------------

EXCEPTIONS = [
    ("ImageNotFound", errno.ENOENT, errors.NotFoundError),
    ("ImageExists", errno.EEXIST, errors.AlreadyExistsError),
    ("ImageBusy", errno.EBUSY, errors.BusyError),
    ("ImageHasSnapshots", errno.ENOTEMPTY, errors.HasSnapshotsError),
    ("PermissionError", errno.EPERM, errors.PermissionDeniedError),
    ("ReadOnlyImage", errno.EROFS, errors.CephError),
    ("InvalidArgument", errno.EINVAL, errors.CephError),
    ("NoSpace", errno.ENOSPC, errors.NoSpaceError),
    ("DiskQuotaExceeded", errno.EDQUOT, errors.NoSpaceError),
    ("Timeout", errno.ETIMEDOUT, errors.OperationTimeoutError),
    ("IOError", errno.EIO, errors.CephError),
    ("ConnectionShutdown", errno.ESHUTDOWN, errors.CephError),
    ("OperationNotSupported", errno.EOPNOTSUPP, errors.CephError),
]

OPERATIONS = [
    ("create_snap", lambda layering: layering.create_snapshot(G), "snapshot rbd/gold@golden"),
    ("remove_snap", lambda layering: layering.remove_snapshot(G, force=True), "removing snapshot rbd/gold@golden"),
    ("flatten", lambda layering: layering.flatten(CHILD), "flattening rbd/child"),
    ("metadata_set", lambda layering: layering.make_golden(G), "recording rbd/gold@golden as golden"),
    ("list_children2", lambda layering: layering.children(G), "listing clones of rbd/gold@golden"),
    ("stat", lambda layering: layering.info(CHILD), "reading image rbd/child"),
]


@pytest.mark.parametrize("exc_name, code, cls", EXCEPTIONS, ids=[e[0] for e in EXCEPTIONS])
@pytest.mark.parametrize("method, call, what", OPERATIONS, ids=[o[0] for o in OPERATIONS])
def test_librbd_exceptions_are_translated_naming_the_object(layering, image, fake_rbd, exc_name, code, cls,
                                                            method, call, what):
    image.list_children2.return_value = []
    image.is_protected_snap.return_value = False
    image.get_parent_image_spec.side_effect = None
    image.get_parent_image_spec.return_value = {"pool_name": "rbd", "image_name": "gold", "snap_name": "golden"}
    if method == "stat":
        image.get_parent_image_spec.side_effect = fake_rbd.ImageNotFound("none", errno=errno.ENOENT)
    getattr(image, method).side_effect = getattr(fake_rbd, exc_name)("from librbd", errno=code)
    with pytest.raises(cls) as info:
        call(layering)
    assert str(info.value).startswith(f"{what}: ")
    assert info.value.errno == code


@pytest.mark.parametrize("exc_name, code, cls", EXCEPTIONS, ids=[e[0] for e in EXCEPTIONS])
def test_clone_and_remove_translate_rbd_api_errors(layering, image, fake_rbd, exc_name, code, cls):
    image.list_snaps.return_value = []
    rbd_api(fake_rbd).clone.side_effect = getattr(fake_rbd, exc_name)("x", errno=code)
    rbd_api(fake_rbd).remove.side_effect = getattr(fake_rbd, exc_name)("x", errno=code)
    with pytest.raises(cls, match=r"^cloning rbd/gold@golden to rbd/child: "):
        layering.clone(G, CHILD)
    with pytest.raises(cls, match=r"^removing image rbd/gold: "):
        layering.remove(ImageSpec("rbd", "gold"))


# --- reruns converge ---------------------------------------------------------------------------

def test_exist_ok_reports_an_existing_clone_of_the_same_parent(layering, image, fake_rbd):
    rbd_api(fake_rbd).clone.side_effect = fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    image.get_parent_image_spec.side_effect = [fake_rbd.ImageNotFound("x", errno=errno.ENOENT),  # facts: gold
                                               {"pool_name": "rbd", "image_name": "gold", "snap_name": "golden"},
                                               fake_rbd.ImageNotFound("x", errno=errno.ENOENT)]
    result = layering.clone(G, CHILD, exist_ok=True)
    assert result.existed and result.depth == 1 and not result.flattened


def test_exist_ok_still_refuses_an_image_that_is_not_this_clone(layering, image, fake_rbd):
    rbd_api(fake_rbd).clone.side_effect = fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    with pytest.raises(errors.AlreadyExistsError,
                       match=r"already exists but is not a clone of rbd/gold@golden \(it has snapshots\)$"):
        layering.clone(G, CHILD, exist_ok=True)
    with pytest.raises(errors.AlreadyExistsError, match=r"rbd/child: already exists$"):
        layering.clone(G, CHILD)


def test_clone_many_starts_no_new_clone_after_a_failure(layering, fake_rbd):
    calls = []

    def clone(p_ioctx, p_name, p_snap, c_ioctx, c_name):
        calls.append(c_name)
        raise fake_rbd.Timeout("dead cluster", errno=errno.ETIMEDOUT)
    rbd_api(fake_rbd).clone.side_effect = clone
    with pytest.raises(errors.OperationTimeoutError, match=r"\(0 of 30 clones made; 29 not tried\); a failed clone may be left half made"):
        layering.clone_many(G, [ImageSpec("rbd", f"vm{i}") for i in range(30)], workers=1)
    assert len(calls) == 1


# --- a flatten cut short must not lose data when it is run again -------------------------------

def test_flatten_marks_itself_while_it_runs(layering, image, fake_rbd):
    image.get_parent_image_spec.side_effect = None
    image.get_parent_image_spec.return_value = {"pool_name": "rbd", "image_name": "gold", "snap_name": "golden"}
    image.features.return_value = 61
    events = []
    image.metadata_set.side_effect = lambda key, value: events.append(("set", key))
    image.flatten.side_effect = lambda **kw: events.append(("flatten",))
    image.metadata_remove.side_effect = lambda key: events.append(("remove", key))
    assert layering.flatten(CHILD) is True
    assert events == [("set", "virtrbd.flattening"), ("flatten",), ("remove", "virtrbd.flattening")]
    image.update_features.assert_not_called()


def test_a_flatten_after_an_interrupted_one_does_not_trust_the_object_map(layering, image, fake_rbd):
    image.get_parent_image_spec.side_effect = None
    image.get_parent_image_spec.return_value = {"pool_name": "rbd", "image_name": "gold", "snap_name": "golden"}
    image.features.return_value = 61
    def metadata_get(key):
        if key != "virtrbd.flattening":
            raise KeyError(key)
        return "in progress"
    image.metadata_get.side_effect = metadata_get
    assert layering.flatten(CHILD) is True
    assert image.update_features.call_args_list == [((24, False),), ((24, True),)]
    image.rebuild_object_map.assert_called_once_with()
    image.metadata_remove.assert_called_once_with("virtrbd.flattening")


def test_an_interrupted_flatten_leaves_its_mark(layering, image, fake_rbd):
    image.get_parent_image_spec.side_effect = None
    image.get_parent_image_spec.return_value = {"pool_name": "rbd", "image_name": "gold", "snap_name": "golden"}
    image.features.return_value = 61
    image.flatten.side_effect = fake_rbd.Timeout("osds gone", errno=errno.ETIMEDOUT)
    with pytest.raises(errors.OperationTimeoutError, match="flattening rbd/child: timed out"):
        layering.flatten(CHILD)
    image.metadata_set.assert_called_once_with("virtrbd.flattening", "in progress")
    image.metadata_remove.assert_not_called()


def test_exist_ok_replaces_the_empty_remains_of_an_interrupted_clone(layering, image, fake_rbd):
    rbd_api(fake_rbd).clone.side_effect = [fake_rbd.ImageExists("exists", errno=errno.EEXIST), None]
    image.list_snaps.return_value = []
    image.diff_iterate.return_value = None          # reports no extent: not a byte of its own
    result = layering.clone(G, CHILD, exist_ok=True)
    assert rbd_api(fake_rbd).remove.call_args.args[1] == "child"
    assert rbd_api(fake_rbd).clone.call_count == 2 and not result.existed


def test_exist_ok_never_replaces_an_image_with_data(layering, image, fake_rbd):
    rbd_api(fake_rbd).clone.side_effect = fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    image.list_snaps.return_value = []
    image.diff_iterate.side_effect = lambda offset, length, snap, cb, **kw: cb(0, 4 << 20, True)
    with pytest.raises(errors.AlreadyExistsError, match=r"is not a clone of .* \(it holds data of its own\)"):
        layering.clone(G, CHILD, exist_ok=True)
    rbd_api(fake_rbd).remove.assert_not_called()


def test_exist_ok_keeps_an_empty_image_a_client_has_open(layering, image, fake_rbd):
    rbd_api(fake_rbd).clone.side_effect = fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    image.list_snaps.return_value = []
    image.watchers_list.return_value = [{"addr": "10.0.0.7:0/42", "id": 1, "cookie": 1}]
    with pytest.raises(errors.AlreadyExistsError, match=r"a client has it open: 10.0.0.7:0/42"):
        layering.clone(G, CHILD, exist_ok=True)
    rbd_api(fake_rbd).remove.assert_not_called()
