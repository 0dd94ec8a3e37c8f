"""A restore against a small stateful cluster: temporary images, replacing an image, the restore's librbd tuning.

Every test runs the real restore (``run_restore``) on real backups of in-memory
images; only the cluster is a fake (``tests/unit/fakes.py``), and the judge is
what the pool holds afterwards.
"""

from __future__ import annotations

import logging
import os

import pytest
import rbd

from virtrbd.backup import leftovers, tuning
from virtrbd.backup.leftovers import is_temp_image, remove_stale_temp_images, temp_image_name
from virtrbd.backup.rbd_io import RbdSink
from virtrbd.backup.restore import plan_restore, run_restore
from virtrbd.backup.stream import CHUNK
from virtrbd.errors import AlreadyExistsError, BackupError, BusyError, CephError, HasSnapshotsError
from virtrbd.spec import ImageSpec

from ..fakes import FakeCluster

VM1 = ImageSpec("rbd", "vm1")
OPEN = [{"addr": "127.0.0.1:0/1"}]          # a client that has the image open


def restore(cluster: FakeCluster, path, **kwargs):
    return run_restore(cluster, plan_restore(path), VM1, **kwargs)


@pytest.fixture
def backup_of(make_full):
    """backup_of(content) -> the path of a full RAW backup of ``content``."""
    return lambda content: make_full(content).path


# --- temporary images and what killed restores leave behind ---------------------------------------------

def test_temporary_image_names_are_recognised_exactly():
    made = temp_image_name("vm1")
    assert made.startswith("vm1.virtrbd-restore-") and is_temp_image(made)
    assert temp_image_name("vm1") != made                       # a fresh token each time
    assert not is_temp_image("vm1.virtrbd-restore-1234abcd-mine")
    assert not is_temp_image("vm1.virtrbd-restore-1234ABCD")
    assert not is_temp_image("vm1.virtrbd-restore-1234abc")
    assert not is_temp_image(".virtrbd-restore-1234abcd")       # no target before the mark
    assert not is_temp_image("vm1")
    long = "x" * 250
    assert len(temp_image_name(long)) == 255 and is_temp_image(temp_image_name(long))


def test_stale_temporary_images_of_the_pool_go_unless_a_client_has_one_open(mocker):
    cluster = FakeCluster()
    for name in ("vm1", "vm1.virtrbd-restore-0000aaaa", "vm1.virtrbd-restore-1111bbbb",
                 "vm10.virtrbd-restore-3333dddd", "vm1.virtrbd-restore-x"):
        cluster.add("rbd", name)
    cluster.pools["rbd"]["vm1.virtrbd-restore-1111bbbb"].watchers = OPEN      # a restore running now
    listed = [*cluster.image_names("rbd"), "vm1.virtrbd-restore-2222cccc"]    # removed by another restore since
    sleep = mocker.patch.object(leftovers.time, "sleep")
    assert remove_stale_temp_images(cluster, "rbd", names=listed) == ["vm1.virtrbd-restore-0000aaaa",
                                                                      "vm10.virtrbd-restore-3333dddd"]
    assert cluster.names() == {"vm1", "vm1.virtrbd-restore-1111bbbb", "vm1.virtrbd-restore-x"}
    sleep.assert_called_once_with(leftovers.STALE_GRACE)


def test_an_image_a_restore_opens_during_the_grace_period_stays(mocker):
    """A running restore's image is unwatched between its creation and its opening: never removed then."""
    just_made, opening = "vm1.virtrbd-restore-0000aaaa", "vm2.virtrbd-restore-1111bbbb"
    cluster = FakeCluster()
    cluster.add("rbd", just_made)
    cluster.add("rbd", opening)
    mocker.patch.object(leftovers.time, "sleep",
                        side_effect=lambda _s: setattr(cluster.pools["rbd"][just_made], "watchers", OPEN))
    # the other is opened between the second look and the removal: librbd refuses to remove it
    cluster.on("remove", lambda pool, name: BusyError(f"image rbd/{name}: is in use") if name == opening else None)
    assert remove_stale_temp_images(cluster, "rbd") == []
    assert cluster.names() == {just_made, opening}


def test_no_wait_when_nothing_is_stale(mocker):
    cluster = FakeCluster()
    cluster.add("rbd", "vm1")
    cluster.add("rbd", "vm1.virtrbd-restore-0000aaaa").watchers = OPEN
    sleep = mocker.patch.object(leftovers.time, "sleep")
    assert remove_stale_temp_images(cluster, "rbd") == []
    sleep.assert_not_called()


def test_a_leftover_that_cannot_be_removed_is_logged_and_the_others_still_go(caplog):
    stuck, other = "vm1.virtrbd-restore-0000aaaa", "vm2.virtrbd-restore-1111bbbb"
    cluster = FakeCluster()
    cluster.add("rbd", stuck)
    cluster.add("rbd", other)
    cluster.on("remove", lambda pool, name: CephError(f"removing image rbd/{name}: Input/output error")
               if name == stuck else None)
    assert remove_stale_temp_images(cluster, "rbd", grace=0) == [other]
    assert f"could not remove rbd/{stuck}" in caplog.text


def test_a_restore_removes_the_leftovers_of_killed_restores_and_leaves_none_of_its_own(backup_of):
    cluster = FakeCluster()
    cluster.add("rbd", "vm2.virtrbd-restore-0000aaaa")
    content = os.urandom(CHUNK)
    restore(cluster, backup_of(content))
    assert cluster.names() == {"vm1"} and bytes(cluster.pools["rbd"]["vm1"].data) == content


def test_a_failed_restore_removes_its_temporary_image(backup_of):
    cluster = FakeCluster()
    cluster.on("rename", lambda pool, old, new: CephError("renaming: Input/output error"))
    with pytest.raises(CephError, match="Input/output error"):
        restore(cluster, backup_of(os.urandom(CHUNK)))
    assert cluster.names() == set()


class InFlightImage:
    """A writable image whose writes stay in flight until ``land`` completes them; it keeps no data."""

    def __init__(self, size: int):
        self._size = size
        self.callbacks = []

    def size(self) -> int:
        return self._size

    def aio_write(self, data, offset, oncomplete, fadvise_flags=0) -> None:
        self.callbacks.append(oncomplete)

    def land(self) -> None:
        completion = type("Completion", (), {"get_return_value": lambda self: 0})()
        for callback in self.callbacks:
            callback(completion)
        self.callbacks.clear()


def test_the_sink_holds_each_buffer_until_librbd_has_written_it():
    """Zero-copy writes: librbd sends the caller's buffer itself, so it must outlive the write."""
    import sys

    image = InFlightImage(CHUNK)
    sink = RbdSink(image, "rbd/restored")
    data = os.urandom(CHUNK)
    alone = sys.getrefcount(data)
    sink.write(0, data)
    assert sys.getrefcount(data) == alone + 1          # held by the write in flight
    image.land()
    sink.drain()
    assert sys.getrefcount(data) == alone              # released once written


# --- replacing an image (--force): one copy of the data at every moment --------------------------------

NEW, OLD = os.urandom(CHUNK), b"old content".ljust(CHUNK, b"\0")


@pytest.fixture
def replacing(backup_of):
    """(cluster holding rbd/vm1 with OLD, path of a backup of NEW)."""
    cluster = FakeCluster()
    cluster.add("rbd", "vm1", OLD)
    return cluster, backup_of(NEW)


def content(cluster: FakeCluster, name: str = "vm1") -> bytes:
    return bytes(cluster.pools["rbd"][name].data)


def test_an_existing_image_is_refused_without_force(replacing):
    cluster, path = replacing
    with pytest.raises(AlreadyExistsError, match="image rbd/vm1: already exists"):
        restore(cluster, path)
    assert cluster.names() == {"vm1"} and content(cluster) == OLD


@pytest.mark.parametrize("what, error", [("snaps", HasSnapshotsError), ("watchers", BusyError)])
def test_an_image_with_snapshots_or_a_client_is_not_replaced(replacing, what, error):
    cluster, path = replacing
    setattr(cluster.pools["rbd"]["vm1"], what, ["s1"] if what == "snaps" else OPEN)
    with pytest.raises(error):
        restore(cluster, path, force=True)
    assert cluster.names() == {"vm1"} and content(cluster) == OLD


def test_a_replacement_renames_the_old_image_aside_and_removes_it_last(replacing):
    cluster, path = replacing
    assert restore(cluster, path, force=True).replaced
    assert cluster.names() == {"vm1"} and content(cluster) == NEW
    renames = [entry for entry in cluster.log if entry[0] == "rename"]
    aside = renames[0][2]
    assert renames[0][1] == "vm1" and aside.startswith("vm1.virtrbd-replaced-")
    assert renames[1][1].startswith("vm1.virtrbd-restore-") and renames[1][2] == "vm1"
    assert cluster.log[-1] == ("remove", aside)                 # the old data goes only at the very end


def test_a_failed_rename_into_place_puts_the_old_image_back(replacing):
    cluster, path = replacing
    cluster.on("rename", lambda pool, old, new: CephError("renaming: Input/output error")
               if ".virtrbd-restore-" in old else None)
    with pytest.raises(CephError, match="Input/output error"):
        restore(cluster, path, force=True)
    assert cluster.names() == {"vm1"} and content(cluster) == OLD    # the old image, under its name


def test_an_interrupted_rename_into_place_puts_the_old_image_back(replacing):
    cluster, path = replacing
    cluster.on("rename", lambda pool, old, new: KeyboardInterrupt() if ".virtrbd-restore-" in old else None)
    with pytest.raises(KeyboardInterrupt):
        restore(cluster, path, force=True)
    assert cluster.names() == {"vm1"} and content(cluster) == OLD


def test_an_image_opened_meanwhile_is_not_replaced(replacing):
    cluster, path = replacing

    def opened_after_the_check(pool, old, new):     # a client opens vm1 after the restore looked
        if old == "vm1":
            cluster.pools["rbd"]["vm1"].watchers = OPEN
    cluster.on("rename", opened_after_the_check)
    with pytest.raises(BusyError, match="is in use"):
        restore(cluster, path, force=True)
    assert cluster.names() == {"vm1"} and content(cluster) == OLD


def test_when_the_old_image_cannot_be_put_back_the_error_says_where_it_is(replacing):
    cluster, path = replacing
    cluster.on("rename", lambda pool, old, new: CephError("renaming: Input/output error")
               if ".virtrbd-restore-" in old or ".virtrbd-replaced-" in old else None)
    with pytest.raises(BackupError, match=r"it is now rbd/vm1\.virtrbd-replaced-[0-9a-f]{8}: rename it back by hand"):
        restore(cluster, path, force=True)
    aside, = cluster.names()
    assert aside.startswith("vm1.virtrbd-replaced-") and content(cluster, aside) == OLD   # the only copy stays


def test_a_replaced_image_that_cannot_be_removed_leaves_the_restore_standing(replacing, caplog):
    cluster, path = replacing
    cluster.on("remove", lambda pool, name: BusyError(f"image rbd/{name}: is in use")
               if ".virtrbd-replaced-" in name else None)
    assert restore(cluster, path, force=True).replaced
    assert content(cluster) == NEW and "remove it by hand" in caplog.text


# --- the restore's librbd settings: per image, unless the client has them already ------------------------------

@pytest.mark.parametrize("client, by_metadata", [
    ({"rbd_cache": "false", "rbd_disable_zero_copy_writes": "false",            # the restore command's client
      "rbd_concurrent_management_ops": "32"}, False),
    ({"rbd_cache": "true", "rbd_disable_zero_copy_writes": "true",              # librbd's defaults
      "rbd_concurrent_management_ops": "10"}, True),
    ({"rbd_cache": "false", "rbd_disable_zero_copy_writes": "false",            # all but one of them
      "rbd_concurrent_management_ops": "10"}, True),
])
def test_the_restore_settings_go_into_the_image_only_when_the_client_lacks_them(backup_of, client, by_metadata):
    cluster = FakeCluster(settings=client)
    restore(cluster, backup_of(os.urandom(CHUNK)))
    image = cluster.pools["rbd"]["vm1"]
    assert image.metadata_ever == ({f"conf_{key}" for key in tuning.RESTORE_CONFIG} if by_metadata else set())
    assert image.metadata == {}                             # the restored image behaves as its pool's others


# --- the object map: held back while a restore fills a good part of the image, then rebuilt ---------------

def restore_watching_features(cluster: FakeCluster, plan) -> set[int]:
    """Restore ``plan`` into rbd/vm1 with its snapshot; the features the image had while the data went in."""
    seen = set()

    def progress(done, total):
        seen.update(image.features() for name, image in cluster.pools["rbd"].items() if is_temp_image(name))
    run_restore(cluster, plan, VM1, create_snapshot=True, progress=progress)
    return seen


#: 16 objects, one of them with data: what the restore writes; the manifest's stats say how much it holds
SIXTEEN_OBJECTS = os.urandom(CHUNK) + bytes(15 * CHUNK)


@pytest.mark.parametrize("data_objects, features, minimum, held_back", [
    (8, 61, 2, True),              # half the image's 16 objects written, the default features: held back
    (2, 61, 2, True),              # 1/8 of them
    (1, 61, 1, False),             # 1/16: the per-object updates cost less than a rebuild
    (8, 61, 16, False),            # half of them, but fewer than the minimum: not worth switching
    (8, 1 | 4 | 32, 2, False),     # no object map to hold back
    (None, 61, 2, False),          # a manifest without stats: as librbd does it
])
def test_the_object_map_is_held_back_only_when_rebuilding_it_is_cheaper(monkeypatch, make_full, data_objects,
                                                                        features, minimum, held_back):
    monkeypatch.setattr(tuning, "HOLD_BACK_OBJECT_MAP_MIN", minimum)     # objects; 64 in real use
    plan = plan_restore(make_full(SIXTEEN_OBJECTS).path)
    plan.links[0].stats = {} if data_objects is None else {"data_bytes": data_objects * CHUNK}
    cluster = FakeCluster(features=features)
    assert restore_watching_features(cluster, plan) == ({features & ~24} if held_back else {features})
    image = cluster.pools["rbd"]["vm1"]
    assert image.features() == features                            # the image ends as it was created
    if held_back:
        assert image.calls == [("off", 24), ("on", 24), ("rebuild",), ("snap", features)]
    else:
        assert image.calls == [("snap", features)]


def test_a_cluster_that_refuses_to_switch_the_map_off_gets_it_kept_up_to_date(monkeypatch, make_full, caplog):
    monkeypatch.setattr(tuning, "HOLD_BACK_OBJECT_MAP_MIN", 1)
    plan = plan_restore(make_full(os.urandom(2 * CHUNK)).path)
    cluster = FakeCluster(on_new_image=lambda image: setattr(
        image, "fail_update_features", rbd.InvalidArgument("[errno 22] error updating features")))
    with caplog.at_level(logging.INFO, logger="virtrbd"):
        assert restore_watching_features(cluster, plan) == {61}
    assert cluster.pools["rbd"]["vm1"].calls == [("snap", 61)] and "keeps it up to date" in caplog.text


def test_a_map_switched_off_despite_an_error_is_switched_on_and_rebuilt(monkeypatch, make_full):
    """A timeout can come after the OSDs made the change: the end compares the features, not the outcome."""
    monkeypatch.setattr(tuning, "HOLD_BACK_OBJECT_MAP_MIN", 1)
    plan = plan_restore(make_full(os.urandom(2 * CHUNK)).path)
    def lose_the_reply(image):
        image.fail_update_features = rbd.Timeout("[errno 110] error updating features")
        image.fail_after_change = True
    cluster = FakeCluster(on_new_image=lose_the_reply)
    assert restore_watching_features(cluster, plan) == {61 & ~24}
    image = cluster.pools["rbd"]["vm1"]
    assert image.features() == 61
    assert image.calls == [("off", 24), ("on", 24), ("rebuild",), ("snap", 61)]
