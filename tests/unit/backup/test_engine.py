"""Backup, verify and restore end to end on in-memory images: formats, chains, failures, interruptions."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import nullcontext

import pytest

from virtrbd.backup import manifest as manifests
from virtrbd.backup.checksum import ContentDigest
from virtrbd.backup.engine import BackupPlan, ImageInfo, plan_restore, restore_chain, run_verify, write_full_backup
from virtrbd.backup.stream import BLOCK, CHUNK, Cancelled, MemorySink, MemorySource, cancellable
from virtrbd.errors import BackupError, CorruptBackupError
from virtrbd.spec import ImageSpec

from .conftest import apply_changes, data_offset, flip_byte, scattered

MiB = 1 << 20


def restored(path, size=None) -> bytes:
    plan = plan_restore(path)
    sink = MemorySink(plan.links[0].size)
    restore_chain(plan, sink)
    return bytes(sink.data)


def expected_checksum(content: bytes) -> str:
    digest = ContentDigest(len(content))
    for index in range(digest.count):
        digest.add(index, content[index * CHUNK:(index + 1) * CHUNK])
    return digest.hexdigest()


CASES = {
    "empty": lambda: (bytes(3 * CHUNK), []),
    "full": lambda: (os.urandom(2 * CHUNK), None),
    "sparse": lambda: scattered(9 * CHUNK, seed=4),
    "one byte more than 4 MiB": lambda: (os.urandom(CHUNK + 1), None),
}


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_backup_verify_restore_is_identical(make_full, fmt, case):
    content, extents = CASES[case]()
    model = MemorySource(content, extents).data
    result = make_full(content, extents, fmt=fmt)
    assert result.checksum == expected_checksum(model)
    assert run_verify(manifests.resolve(result.path)).checksum == result.checksum
    assert restored(result.path) == model
    assert sorted(p.name for p in result.path.parent.iterdir()) == sorted([result.path.name, result.manifest.name])


def test_restore_writes_only_blocks_with_data(make_full):
    content = bytearray(4 * CHUNK)
    content[CHUNK + 10] = 1
    content[3 * CHUNK:3 * CHUNK + 2 * BLOCK] = b"z" * 2 * BLOCK
    result = make_full(bytes(content), None, fmt="raw")
    plan = plan_restore(result.path)
    sink = MemorySink(plan.links[0].size)
    restore_chain(plan, sink)
    assert sink.written == [(CHUNK, BLOCK), (3 * CHUNK, 2 * BLOCK)]


def test_chain_of_incrementals_restores_the_newest(make_full, make_incremental):
    size = 3 * CHUNK
    v1, extents = scattered(size, seed=1)
    make_full(v1, extents, fmt="qcow2", snapshot="s1")
    v2, ch = apply_changes(v1, size, [(100, os.urandom(5000)), (2 * CHUNK, b"q" * 7)], [(CHUNK, 70000)])
    make_incremental(v2, ch, "s1", "s2")
    v3, ch = apply_changes(v2, size + CHUNK + 3, [(size + 5, b"grown")], [(0, 200)])    # the image grew
    inc = make_incremental(v3, ch, "s2", "s3", snapshot_id=3)
    assert restored(inc.path) == v3
    m = manifests.load(inc.manifest)
    assert m.stats["data_bytes"] == 5 and m.stats["zero_bytes"] == 200
    assert m.file_size < 400                              # only what changed, plus headers


def test_incremental_of_data_that_became_zeros_records_zeros(make_full, make_incremental):
    v1 = os.urandom(CHUNK)
    make_full(v1, None, snapshot="s1")
    v2, ch = apply_changes(v1, CHUNK, [(0, bytes(8192))], [])     # written, but with zeros
    inc = make_incremental(v2, ch, "s1", "s2")
    stats = manifests.load(inc.manifest).stats
    assert (stats["data_bytes"], stats["zero_bytes"], stats["records"]) == (0, 8192, 1)
    assert restored(inc.path) == v2


def test_incremental_needs_the_backup_it_applies_to(make_incremental):
    with pytest.raises(BackupError, match="no backup of rbd/img@s1"):
        make_incremental(bytes(10), [(0, 1, True)], "s1", "s2")


def test_corrupted_data_is_caught_by_verify_and_restore(make_full):
    content, extents = scattered(4 * CHUNK, seed=8)
    result = make_full(content, extents, fmt="raw")
    flip_byte(result.path, data_offset(result.path) + 3)
    with pytest.raises(CorruptBackupError, match="checksum mismatch"):
        run_verify(manifests.resolve(result.path))
    with pytest.raises(CorruptBackupError, match="checksum mismatch: its data has CRC-32C"):
        restored(result.path)


def test_restore_falls_back_to_sha256_for_a_manifest_without_crc(make_full):
    content, extents = scattered(4 * CHUNK, seed=9)
    result = make_full(content, extents, fmt="raw")
    data = json.loads(result.manifest.read_text())
    del data["checksum"]["data_crc32c"], data["seal"]      # as written before the CRC and the seal
    result.manifest.write_text(json.dumps(data))
    assert restored(result.path) == content
    flip_byte(result.path, data_offset(result.path) + 3)
    with pytest.raises(CorruptBackupError, match="checksum mismatch"):
        restored(result.path)


def test_corrupted_diff_is_caught(make_full, make_incremental):
    v1 = os.urandom(CHUNK)
    make_full(v1, None, snapshot="s1")
    v2, ch = apply_changes(v1, CHUNK, [(0, os.urandom(5000))], [])
    inc = make_incremental(v2, ch, "s1", "s2")
    flip_byte(inc.path, inc.file_size - 100)
    with pytest.raises(CorruptBackupError, match="checksum mismatch"):
        run_verify(manifests.resolve(inc.path))


def test_truncated_backups_fail_before_anything_is_written(make_full, make_incremental):
    v1, extents = scattered(2 * CHUNK, seed=2)
    full = make_full(v1, extents, fmt="qcow2", snapshot="s1")
    v2, ch = apply_changes(v1, 2 * CHUNK, [(0, b"x" * 10)], [])
    inc = make_incremental(v2, ch, "s1", "s2")
    os.truncate(inc.path, inc.file_size - 1)
    with pytest.raises(CorruptBackupError, match="truncated"):
        plan_restore(inc.path)
    os.truncate(full.path, full.file_size // 2)
    with pytest.raises(CorruptBackupError, match="truncated"):
        plan_restore(full.path)


def test_a_diff_whose_header_disagrees_with_its_manifest(make_full, make_incremental, tmp_path):
    v1 = bytes(CHUNK)
    make_full(v1, [], snapshot="s1")
    v2, ch = apply_changes(v1, CHUNK, [(0, b"x")], [])
    inc = make_incremental(v2, ch, "s1", "s2")
    other = tmp_path / "other"
    other.mkdir()
    make_full(v1, [], snapshot="s1", dest=other, image="other")
    alien = make_incremental(v2, ch, "s1", "s5", dest=other, image="other")
    inc.path.write_bytes(alien.path.read_bytes())       # the same size, another stream
    with pytest.raises(CorruptBackupError, match="the diff goes from @s1 to @s5"):
        plan_restore(inc.path)


def test_an_existing_backup_is_never_replaced(make_full):
    first = make_full(b"a" * 100)
    with pytest.raises(BackupError, match="exists already"):
        make_full(b"b" * 100)
    assert restored(first.path) == b"a" * 100


def test_data_left_by_an_interrupted_publication_is_replaced(make_full, tmp_path):
    (tmp_path / "rbd~img~s1.raw").write_bytes(b"half")       # no manifest: never committed
    result = make_full(b"c" * 100)
    assert restored(result.path) == b"c" * 100


class FailingSource(MemorySource):
    """Reads fail after a few: with an error, with a forced interrupt, or by asking the operation to stop."""

    def __init__(self, data, fail_after: int, how):
        super().__init__(data)
        self.reads = 0
        self.fail_after = fail_after
        self.how = how

    def submit_read(self, offset, length, done):
        self.reads += 1
        if self.reads > self.fail_after:
            if isinstance(self.how, threading.Event):
                self.how.set()                      # like the command's first SIGTERM
            elif isinstance(self.how, KeyboardInterrupt):
                raise self.how                      # like a second, forcing signal
            else:
                done(None, self.how)
                return
        super().submit_read(offset, length, done)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("how, raised", [(OSError(5, "injected read error"), OSError),
                                         (KeyboardInterrupt(), KeyboardInterrupt),
                                         ("cancel", Cancelled)])
def test_a_failed_or_interrupted_backup_leaves_no_file(tmp_path, fmt, how, raised):
    event = threading.Event()
    source = FailingSource(os.urandom(12 * CHUNK), fail_after=3, how=event if how == "cancel" else how)
    plan = BackupPlan(ImageSpec("rbd", "img", "s1"), tmp_path, fmt)
    started = time.monotonic()
    with pytest.raises(raised), cancellable(event):
        write_full_backup(source, ImageInfo(source.size, "id", 1), plan)
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []


def test_a_cancelled_restore_stops_before_the_end(make_full):
    result = make_full(os.urandom(8 * CHUNK), None)
    plan = plan_restore(result.path)
    event = threading.Event()

    class StoppingSink(MemorySink):
        def write(self, offset, data, start=0, end=None):
            event.set()
            super().write(offset, data, start, end)

    sink = StoppingSink(plan.links[0].size)
    with pytest.raises(Cancelled), cancellable(event):
        restore_chain(plan, sink)
    assert len(sink.written) < 8


def test_chain_across_a_shrink(make_full, make_incremental):
    v1 = os.urandom(3 * CHUNK)
    make_full(v1, None, snapshot="s1")
    v2, ch = apply_changes(v1, CHUNK + 10, [(5, b"after the shrink")], [])
    inc = make_incremental(v2, ch, "s1", "s2")
    assert restored(inc.path) == v2


# --- what killed restores leave behind ---------------------------------------------------------------

def test_temporary_image_names_are_recognised_exactly():
    from virtrbd.backup.engine import _is_temp_image, _temp_image_name

    made = _temp_image_name("vm1")
    assert made.startswith("vm1.virtrbd-restore-") and _is_temp_image(made)
    assert _temp_image_name("vm1") != made                       # a fresh token each time
    assert not _is_temp_image("vm1.virtrbd-restore-1234abcd-mine")
    assert not _is_temp_image("vm1.virtrbd-restore-1234ABCD")
    assert not _is_temp_image("vm1.virtrbd-restore-1234abc")
    assert not _is_temp_image(".virtrbd-restore-1234abcd")       # no target before the mark
    assert not _is_temp_image("vm1")
    long = "x" * 250
    assert len(_temp_image_name(long)) == 255 and _is_temp_image(_temp_image_name(long))


def fake_pool(mocker, names, watchers):
    """A cluster whose pool lists ``names``; ``watchers(name)`` says who has an image open (None: it is gone)."""
    from contextlib import contextmanager

    from virtrbd.errors import NotFoundError

    @contextmanager
    def image(pool, name, read_only=False):
        found = watchers(name)
        if found is None:
            raise NotFoundError(f"image {pool}/{name}: does not exist")
        handle = mocker.MagicMock()
        handle.watchers_list.return_value = found
        yield handle

    cluster = mocker.MagicMock()
    cluster.image_names.return_value = names
    cluster.image.side_effect = image
    return cluster


def test_stale_temporary_images_of_the_pool_go_unless_a_client_has_one_open(mocker):
    from virtrbd.backup import engine

    names = ["vm1", "vm1.virtrbd-restore-0000aaaa", "vm1.virtrbd-restore-1111bbbb",
             "vm1.virtrbd-restore-2222cccc", "vm10.virtrbd-restore-3333dddd", "vm1.virtrbd-restore-x"]
    watched = {"vm1.virtrbd-restore-1111bbbb"}          # a restore running now
    vanished = {"vm1.virtrbd-restore-2222cccc"}         # removed by another restore meanwhile
    cluster = fake_pool(mocker, names, lambda name: None if name in vanished else
                        [{"addr": "127.0.0.1:0/1"}] if name in watched else [])
    removed = mocker.patch.object(engine, "_remove_image")
    sleep = mocker.patch.object(engine.time, "sleep")
    assert engine.remove_stale_temp_images(cluster, "rbd") == ["vm1.virtrbd-restore-0000aaaa",
                                                               "vm10.virtrbd-restore-3333dddd"]
    assert removed.call_args_list == [mocker.call(cluster, "rbd", "vm1.virtrbd-restore-0000aaaa"),
                                      mocker.call(cluster, "rbd", "vm10.virtrbd-restore-3333dddd")]
    sleep.assert_called_once_with(engine.STALE_GRACE)


def test_an_image_a_restore_opens_during_the_grace_period_stays(mocker):
    """A running restore's image is unwatched between its creation and its opening: never removed then."""
    from virtrbd.backup import engine
    from virtrbd.errors import BusyError

    just_made, opening = "vm1.virtrbd-restore-0000aaaa", "vm2.virtrbd-restore-1111bbbb"
    opened = set()
    cluster = fake_pool(mocker, [just_made, opening],
                        lambda name: [{"addr": "127.0.0.1:0/1"}] if name in opened else [])
    mocker.patch.object(engine.time, "sleep", side_effect=lambda _s: opened.add(just_made))

    def remove(_cluster, _pool, name):          # librbd refuses to remove an image a client has open
        if name == opening:
            raise BusyError(f"image rbd/{name}: is in use")
    mocker.patch.object(engine, "_remove_image", side_effect=remove)
    assert engine.remove_stale_temp_images(cluster, "rbd") == []


def test_no_wait_when_nothing_is_stale(mocker):
    from virtrbd.backup import engine

    cluster = fake_pool(mocker, ["vm1", "vm1.virtrbd-restore-0000aaaa"], lambda name: [{"addr": "a"}])
    sleep = mocker.patch.object(engine.time, "sleep")
    assert engine.remove_stale_temp_images(cluster, "rbd") == []
    sleep.assert_not_called()


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

    from virtrbd.backup.engine import RbdSink

    image = InFlightImage(CHUNK)
    sink = RbdSink(image, "rbd/restored")
    data = os.urandom(CHUNK)
    alone = sys.getrefcount(data)
    sink.write(0, data)
    assert sys.getrefcount(data) == alone + 1          # held by the write in flight
    image.land()
    sink.drain()
    assert sys.getrefcount(data) == alone              # released once written


def test_a_leftover_that_cannot_be_removed_is_logged_and_the_others_still_go(mocker, caplog):
    from virtrbd.backup import engine
    from virtrbd.errors import CephError

    stuck, other = "vm1.virtrbd-restore-0000aaaa", "vm2.virtrbd-restore-1111bbbb"
    cluster = fake_pool(mocker, [stuck, other], lambda name: [])
    mocker.patch.object(engine.time, "sleep")

    def remove(_cluster, _pool, name):
        if name == stuck:
            raise CephError(f"removing image rbd/{name}: Input/output error")
    mocker.patch.object(engine, "_remove_image", side_effect=remove)
    assert engine.remove_stale_temp_images(cluster, "rbd") == [other]
    assert f"could not remove rbd/{stuck}" in caplog.text


# --- replacing an image (--force): one copy of the data at every moment --------------------------------

class SwapPool:
    """Image names of one pool as librbd keeps them; ``rename`` may be told to fail for one move."""

    def __init__(self, mocker, names, *, fail_rename=None, watched=()):
        from contextlib import contextmanager

        self.names = set(names)
        self.fail_rename = fail_rename          # (old, new) -> exception, for moves matching a predicate
        self.watched = set(watched)
        self.removed = []
        pool = self

        @contextmanager
        def image(_pool, name, snapshot=None, read_only=False):
            handle = mocker.MagicMock()
            handle.watchers_list.return_value = [{"addr": "a"}] if name in pool.watched else []
            yield handle

        def create(_pool, name, size, **_options):
            pool.names.add(name)

        def rename(_pool, old, new):
            failure = self.fail_rename and self.fail_rename(old, new)
            if failure:
                raise failure
            pool.names.remove(old)
            pool.names.add(new)

        self.cluster = mocker.MagicMock()
        self.cluster.image.side_effect = image
        self.cluster.create.side_effect = create
        self.cluster.rename.side_effect = rename
        self.cluster.image_names.side_effect = lambda _pool: sorted(pool.names)

    def remove(self, _cluster, _pool, name):
        self.names.remove(name)
        self.removed.append(name)


@pytest.fixture
def replace(mocker, make_full):
    """replace(pool) -> run_restore of a small backup over the existing image rbd/vm1, with --force."""
    from virtrbd.backup import engine

    plan = plan_restore(make_full(os.urandom(CHUNK)).path)
    for name in ("_configure_for_restore", "_forget_restore_config", "_check_replaceable", "restore_chain"):
        mocker.patch.object(engine, name)
    mocker.patch.object(engine, "remove_stale_temp_images", return_value=[])

    def run(pool: SwapPool):
        mocker.patch.object(engine, "_remove_image", side_effect=pool.remove)
        return engine.run_restore(pool.cluster, plan, ImageSpec("rbd", "vm1"), force=True)
    return run


def test_a_replacement_renames_the_old_image_aside_and_removes_it_last(mocker, replace):
    pool = SwapPool(mocker, ["vm1"])
    assert replace(pool).replaced
    assert pool.names == {"vm1"} and len(pool.removed) == 1
    assert pool.removed[0].startswith("vm1.virtrbd-replaced-")


def test_a_failed_rename_into_place_puts_the_old_image_back(mocker, replace):
    from virtrbd.errors import CephError

    pool = SwapPool(mocker, ["vm1"], fail_rename=lambda old, new: (
        CephError("renaming: Input/output error") if ".virtrbd-restore-" in old else None))
    with pytest.raises(CephError, match="Input/output error"):
        replace(pool)
    assert pool.names == {"vm1"}                               # the old image, under its name
    assert [n for n in pool.removed if ".virtrbd-restore-" in n]   # the restored copy went


def test_an_interrupted_rename_into_place_puts_the_old_image_back(mocker, replace):
    pool = SwapPool(mocker, ["vm1"], fail_rename=lambda old, new: (
        KeyboardInterrupt() if ".virtrbd-restore-" in old else None))
    with pytest.raises(KeyboardInterrupt):
        replace(pool)
    assert pool.names == {"vm1"}


def test_an_image_opened_meanwhile_is_not_replaced(mocker, replace):
    from virtrbd.errors import BusyError

    pool = SwapPool(mocker, ["vm1"])

    def opened_after_the_check(old, new):          # a client opened vm1 after _check_replaceable looked
        pool.watched.add(new)
    pool.fail_rename = opened_after_the_check
    with pytest.raises(BusyError, match="is in use"):
        replace(pool)
    assert "vm1" in pool.names and not [n for n in pool.names if ".virtrbd-" in n]


def test_when_the_old_image_cannot_be_put_back_the_error_says_where_it_is(mocker, replace):
    from virtrbd.errors import BackupError, CephError

    def fail(old, new):
        if ".virtrbd-restore-" in old or ".virtrbd-replaced-" in old:
            return CephError("renaming: Input/output error")
    pool = SwapPool(mocker, ["vm1"], fail_rename=fail)
    with pytest.raises(BackupError, match=r"it is now rbd/vm1\.virtrbd-replaced-[0-9a-f]{8}: rename it back by hand"):
        replace(pool)
    aside, = [n for n in pool.names if ".virtrbd-replaced-" in n]
    assert aside not in pool.removed                           # the only copy of the old data stays


def test_a_replaced_image_that_cannot_be_removed_leaves_the_restore_standing(mocker, replace, caplog):
    from virtrbd.errors import BusyError

    pool = SwapPool(mocker, ["vm1"])

    def remove(cluster, pool_name, name):
        if ".virtrbd-replaced-" in name:
            raise BusyError(f"image rbd/{name}: is in use")
        SwapPool.remove(pool, cluster, pool_name, name)
    pool.remove = remove
    assert replace(pool).replaced
    assert "vm1" in pool.names and "remove it by hand" in caplog.text


# --- the restore's librbd settings: per image, unless the client has them already ------------------------------

@pytest.mark.parametrize("client, by_metadata", [
    ({"rbd_cache": "false", "rbd_disable_zero_copy_writes": "false",            # the restore command's client
      "rbd_concurrent_management_ops": "32"}, False),
    ({"rbd_cache": "true", "rbd_disable_zero_copy_writes": "true",              # librbd's defaults
      "rbd_concurrent_management_ops": "10"}, True),
    ({"rbd_cache": "false", "rbd_disable_zero_copy_writes": "false",            # all but one of them
      "rbd_concurrent_management_ops": "10"}, True),
])
def test_the_restore_settings_go_into_the_image_only_when_the_client_lacks_them(mocker, make_full, client,
                                                                                 by_metadata):
    from virtrbd.backup import engine

    plan = plan_restore(make_full(os.urandom(CHUNK)).path)
    pool = SwapPool(mocker, [])
    pool.cluster.setting.side_effect = client.__getitem__
    configure = mocker.patch.object(engine, "_configure_for_restore")
    forget = mocker.patch.object(engine, "_forget_restore_config")
    mocker.patch.object(engine, "restore_chain")
    mocker.patch.object(engine, "remove_stale_temp_images", return_value=[])
    engine.run_restore(pool.cluster, plan, ImageSpec("rbd", "vm1"))
    assert pool.names == {"vm1"}
    assert configure.called is by_metadata and forget.called is by_metadata


# --- the object map: held back while a restore fills a good part of the image, then rebuilt ---------------

class FeatureImage:
    """An open image as far as features, the object map and snapshots go; ``calls`` in order."""

    OBJECT_MAP, FAST_DIFF = 8, 16

    def __init__(self, features, *, fail=None, fail_after_change=False):
        self._features = features
        self.calls = []
        self.fail = fail                             # an exception for update_features ...
        self.fail_after_change = fail_after_change   # ... raised after the change took effect (a lost reply)

    def features(self):
        return self._features

    def update_features(self, features, enabled):
        if self.fail and not self.fail_after_change:
            raise self.fail
        self._features = self._features | features if enabled else self._features & ~features
        self.calls.append(("on" if enabled else "off", features))
        if self.fail:
            self.fail, failure = None, self.fail
            raise failure

    def rebuild_object_map(self):
        self.calls.append(("rebuild",))

    def create_snap(self, name):
        self.calls.append(("snap", self._features))


@pytest.fixture
def restore_onto(mocker):
    """restore_onto(image, plan) -> run_restore of ``plan`` writing into the FeatureImage ``image``, with --snapshot;
    returns the image's features as they were while the data went in."""
    from virtrbd.backup import engine

    def run(image, plan):
        pool = SwapPool(mocker, [])
        pool.cluster.image.side_effect = lambda *a, **k: nullcontext(image)
        while_writing = []
        mocker.patch.object(engine, "RbdSink")
        mocker.patch.object(engine, "restore_chain", side_effect=lambda *a, **k: while_writing.append(
            image.features()))
        for name in ("_configure_for_restore", "_forget_restore_config"):
            mocker.patch.object(engine, name)
        mocker.patch.object(engine, "remove_stale_temp_images", return_value=[])
        engine.run_restore(pool.cluster, plan, ImageSpec("rbd", "vm1"), create_snapshot=True)
        return while_writing
    return run


@pytest.mark.parametrize("data_objects, features, minimum, held_back", [
    (8, 61, 2, True),              # half the image's 16 objects written, the default features: held back
    (2, 61, 2, True),              # 1/8 of them
    (1, 61, 1, False),             # 1/16: the per-object updates cost less than a rebuild
    (8, 61, 16, False),            # half of them, but fewer than the minimum: not worth switching
    (8, 1 | 4 | 32, 2, False),     # no object map to hold back
    (None, 61, 2, False),          # a manifest without stats: as librbd does it
])
def test_the_object_map_is_held_back_only_when_rebuilding_it_is_cheaper(mocker, make_full, restore_onto,
                                                                        data_objects, features, minimum, held_back):
    from virtrbd.backup import engine

    mocker.patch.object(engine, "HOLD_BACK_OBJECT_MAP_MIN", minimum)     # objects; 64 in real use
    plan = plan_restore(make_full(bytes(16 * CHUNK)).path)
    plan.links[0].stats = {} if data_objects is None else {"data_bytes": data_objects * CHUNK}
    image = FeatureImage(features)
    while_writing = restore_onto(image, plan)
    assert image.features() == features                            # the image ends as it was created
    if held_back:
        assert while_writing == [features & ~24]
        assert image.calls == [("off", 24), ("on", 24), ("rebuild",), ("snap", features)]
    else:
        assert while_writing == [features] and image.calls == [("snap", features)]


def test_a_cluster_that_refuses_to_switch_the_map_off_gets_it_kept_up_to_date(mocker, make_full, restore_onto,
                                                                              caplog):
    import logging

    import rbd

    from virtrbd.backup import engine

    mocker.patch.object(engine, "HOLD_BACK_OBJECT_MAP_MIN", 1)
    plan = plan_restore(make_full(os.urandom(2 * CHUNK)).path)
    image = FeatureImage(61, fail=rbd.InvalidArgument("[errno 22] error updating features"))
    with caplog.at_level(logging.INFO, logger="virtrbd"):
        assert restore_onto(image, plan) == [61]
    assert image.calls == [("snap", 61)] and "keeps it up to date" in caplog.text


def test_a_map_switched_off_despite_an_error_is_switched_on_and_rebuilt(mocker, make_full, restore_onto):
    """A timeout can come after the OSDs made the change: the end compares the features, not the outcome."""
    import rbd

    from virtrbd.backup import engine

    mocker.patch.object(engine, "HOLD_BACK_OBJECT_MAP_MIN", 1)
    plan = plan_restore(make_full(os.urandom(2 * CHUNK)).path)
    image = FeatureImage(61, fail=rbd.Timeout("[errno 110] error updating features"), fail_after_change=True)
    assert restore_onto(image, plan) == [61 & ~24]
    assert image.features() == 61
    assert image.calls == [("off", 24), ("on", 24), ("rebuild",), ("snap", 61)]
