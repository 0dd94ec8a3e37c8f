"""Snapshots of a whole domain at one instant (issue 18), against a fake cluster, libvirt autospecced and a guard
that records what it was told; the guard's own process runs for real against libvirt's test driver."""

from __future__ import annotations

import functools
import threading
import time
import types

import libvirt
import pytest

from virtrbd import Storage, errors
from virtrbd.ceph.image import SNAP_CREATE_SKIP_QUIESCE
from virtrbd.domains import backup as domain_backup
from virtrbd.domains import snapshot as domain_snapshot
from virtrbd.layering.base import ConsistencyRecord
from virtrbd.layering.snapshots import _drop_record as drop_record
from virtrbd.libvirt.thaw_guard import ThawGuard
from virtrbd.spec import ImageSpec

from .fakes import FakeCluster, libvirt_error

UUID = "6a3c1a52-53a4-4c29-b1f5-2d1c0a7e9b10"


def domain_xml(*disks: str) -> str:
    """``rbd:POOL/IMAGE`` or ``file:/PATH`` per disk, vda first."""
    parts = []
    for index, disk in enumerate(disks):
        kind, _, where = disk.partition(":")
        target = f"vd{chr(ord('a') + index)}"
        if kind == "rbd":
            parts.append(f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
                         f"<source protocol='rbd' name='{where}'><host name='127.0.0.1' port='3300'/></source>"
                         f"<target dev='{target}' bus='virtio'/></disk>")
        else:
            parts.append(f"<disk type='file' device='disk'><source file='{where}'/>"
                         f"<target dev='{target}' bus='virtio'/></disk>")
    return f"<domain type='qemu'><name>vm1</name><devices>{''.join(parts)}</devices></domain>"


class RecordingGuard:
    """Stands in for ThawGuard: no process, what it was told in ``events``."""

    events: list = []
    answer = "virtrbd thaw guard: domain vm1: thawed 2 filesystem(s)"

    def __init__(self, uri, domain_uuid, timeout):
        self.timeout, self.deadline = timeout, None
        self.events.append(("guard", domain_uuid, timeout))

    def arm(self, *actions):
        self.deadline = time.monotonic() + self.timeout
        self.events.append(("arm", *actions))

    def done(self):
        self.events.append(("done",))

    def abandon(self, wait):
        self.events.append(("abandon",))
        return self.answer


def logged(events: list, call: str, answer: int):
    def record(*_args, **_kwargs):
        events.append((call,))
        return answer
    return record


def snapshotter(events: list, image, name: str):
    def create_snap(snapshot: str, flags: int = 0) -> None:
        events.append(("snap", name, flags))
        image.snaps.append(snapshot)
    return create_snap


@pytest.fixture
def world(lv, conf, mocker):
    """A fake cluster with images vm1-a and vm1-b, domain vm1 running with both, its agent answering."""
    cluster = FakeCluster()
    cluster.add("rbd", "vm1-a", size=1 << 20)
    cluster.add("rbd", "vm1-b", size=1 << 20)
    dom = lv.conn.lookupByName.return_value
    dom.XMLDesc.return_value = domain_xml("rbd:rbd/vm1-a", "rbd:rbd/vm1-b")
    dom.state.return_value = [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]
    dom.UUIDString.return_value = UUID
    dom.name.return_value = "vm1"
    dom.fsFreeze.return_value = 2
    dom.fsThaw.return_value = 2
    RecordingGuard.events = events = []
    mocker.patch.object(domain_snapshot, "ThawGuard", RecordingGuard)
    for call, answer in (("fsFreeze", 2), ("fsThaw", 2), ("suspend", 0), ("resume", 0)):
        getattr(dom, call).side_effect = logged(events, call, answer)
    for name in ("vm1-a", "vm1-b"):
        cluster.pools["rbd"][name].create_snap = snapshotter(events, cluster.pools["rbd"][name], name)
    storage = types.SimpleNamespace(config=conf, cluster=cluster)
    return types.SimpleNamespace(cluster=cluster, dom=dom, events=events, storage=storage, lv=lv)


def take(world, snapshot="s1", **options):
    return domain_snapshot.snapshot_domain(world.storage, "vm1", snapshot, libvirt_module=world.lv, **options)


def snaps(world) -> dict[str, list[str]]:
    return {name: list(image.snaps) for name, image in world.cluster.pools["rbd"].items()}


def record(world, image: str, snapshot: str = "s1") -> ConsistencyRecord | None:
    fake = world.cluster.pools["rbd"][image]
    snap_id = next(s["id"] for s in fake.list_snaps() if s["name"] == snapshot)
    return ConsistencyRecord.read(fake, snapshot, snap_id)


def test_a_running_guest_is_frozen_only_around_the_snapshots_of_all_its_disks(world):
    made = take(world, quiesce="require")
    assert world.events[:3] == [("guard", UUID, 10.0), ("arm", "thaw"), ("fsFreeze",)]
    assert sorted(world.events[3:5]) == [("snap", "vm1-a", SNAP_CREATE_SKIP_QUIESCE),
                                         ("snap", "vm1-b", SNAP_CREATE_SKIP_QUIESCE)]
    assert world.events[5:] == [("fsThaw",), ("done",)]
    assert made.consistency == "application" and made.frozen == 2 and not made.paused
    assert [str(d.image) for d in made.disks] == ["rbd/vm1-a", "rbd/vm1-b"]
    assert set(made.seconds) == {"freeze", "snapshots", "thaw", "window"}
    assert "application-consistent (2 filesystem(s) frozen for" in made.describe()
    for image in ("vm1-a", "vm1-b"):
        assert record(world, image) == ConsistencyRecord(1, "application", UUID, "vm1", ("rbd/vm1-a", "rbd/vm1-b"))


def test_auto_without_an_answering_agent_pauses_the_guest_instead_and_says_crash(world):
    world.dom.fsFreeze.side_effect = libvirt_error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                                                   "Guest agent is not responding: QEMU guest agent is not connected")
    made = take(world)
    assert made.consistency == "crash" and made.paused and made.frozen is None
    assert "QEMU guest agent is not connected" in made.note and made.note in made.describe()
    kinds = [event[0] for event in world.events]
    assert kinds == ["guard", "arm", "fsThaw", "done", "guard", "arm", "suspend", "snap", "snap", "resume", "done"]
    assert world.events[5] == ("arm", "resume")
    assert record(world, "vm1-b").consistency == "crash"


def test_require_without_a_freeze_creates_nothing_and_thaws_anyway(world):
    world.dom.fsFreeze.side_effect = libvirt_error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "agent is not responding")
    with pytest.raises(errors.LibvirtError, match=r"^domain vm1: its filesystems could not be frozen .*agent is "
                                                  r"not responding.*nothing was created \(--quiesce require\)$"):
        take(world, quiesce="require")
    assert snaps(world) == {"vm1-a": [], "vm1-b": []}
    assert [e[0] for e in world.events] == ["guard", "arm", "fsThaw", "done"]


def test_off_with_one_disk_neither_freezes_nor_pauses(world):
    world.dom.XMLDesc.return_value = domain_xml("rbd:rbd/vm1-a")
    made = take(world, quiesce="off")
    assert made.consistency == "crash" and not made.paused and made.frozen is None
    assert [e[0] for e in world.events] == ["snap"]
    assert made.describe().endswith("crash-consistent (not frozen)")


@pytest.mark.parametrize("reason, quiesce, consistency", [
    (libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, "require", "application"),
    (libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, "auto", "crash"),
    (libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, "off", "crash"),
])
def test_a_domain_that_is_off_is_labelled_by_how_it_stopped(world, reason, quiesce, consistency):
    world.dom.state.return_value = [libvirt.VIR_DOMAIN_SHUTOFF, reason]
    made = take(world, quiesce=quiesce)
    assert made.consistency == consistency and [e[0] for e in world.events] == ["snap", "snap"]


def test_require_refuses_a_domain_that_was_destroyed(world):
    world.dom.state.return_value = [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    with pytest.raises(errors.LibvirtError, match="off without a clean shutdown.*nothing was created"):
        take(world, quiesce="require")
    assert snaps(world) == {"vm1-a": [], "vm1-b": []} and world.events == []


def test_a_paused_guest_cannot_be_frozen_but_is_one_instant_already(world):
    world.dom.state.return_value = [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    with pytest.raises(errors.LibvirtError, match="is paused, so its agent cannot freeze"):
        take(world, quiesce="require")
    made = take(world)
    assert made.consistency == "crash" and not made.paused and [e[0] for e in world.events] == ["snap", "snap"]


def test_a_failed_snapshot_removes_the_others_and_thaws(world):
    def refuse(snap, flags=0):
        raise errors.NoSpaceError("snapshot rbd/vm1-b@s1: the pool is full")
    world.cluster.pools["rbd"]["vm1-b"].create_snap = refuse
    with pytest.raises(errors.NoSpaceError, match="pool is full"):
        take(world)
    assert snaps(world) == {"vm1-a": [], "vm1-b": []}
    assert world.events[-2:] == [("fsThaw",), ("done",)]


def test_snapshots_that_outlast_the_freeze_timeout_are_not_kept(world):
    image = world.cluster.pools["rbd"]["vm1-b"]
    image.create_snap = lambda snap, flags=0: (time.sleep(0.05), image.snaps.append(snap))
    with pytest.raises(errors.LibvirtError, match="took longer than the freeze timeout"):
        take(world, freeze_timeout=0.01)
    assert snaps(world) == {"vm1-a": [], "vm1-b": []}


def test_a_failed_thaw_is_left_to_the_guard_and_reported_with_its_answer(world):
    world.dom.fsThaw.side_effect = libvirt_error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "agent went away")
    with pytest.raises(errors.LibvirtError, match=r"thawing the filesystems of vm1: agent went away; the thaw "
                                                  r"guard then said: virtrbd thaw guard: domain vm1: thawed 2"):
        take(world)
    assert ("abandon",) in world.events and ("done",) not in world.events
    assert snaps(world) == {"vm1-a": [], "vm1-b": []}


def test_a_snapshot_ceph_never_ends_is_given_up_named_and_its_objects_never_closed(world, mocker):
    """A monitor gone: librbd waits without end.  The line names every disk; closing would wait or abort."""
    never = threading.Event()
    image = world.cluster.pools["rbd"]["vm1-b"]
    image.create_snap = lambda snap, flags=0: never.wait()
    mocker.patch.object(domain_snapshot, "SETTLE", 0.2)
    kept = mocker.patch.object(domain_snapshot.exits, "keep_until_exit")
    started = time.monotonic()
    with pytest.raises(errors.OperationTimeoutError, match=r"^domain vm1: Ceph did not create snapshot s1 of "
                                                           r"rbd/vm1-b within 0.3 s .*remove s1 wherever it appears "
                                                           r"on rbd/vm1-a, rbd/vm1-b \('virtrbd snap rm'\)$"):
        take(world, freeze_timeout=0.1)
    assert time.monotonic() - started < 3
    assert ("forsake",) in world.cluster.log and image in kept.call_args.args
    assert world.events[-2:] == [("fsThaw",), ("done",)]                # released (here the thaw answers)
    never.set()


def test_a_thaw_that_never_returns_is_left_to_the_guard(world, mocker):
    never = threading.Event()
    world.dom.fsThaw.side_effect = lambda *args: never.wait()
    mocker.patch.object(domain_snapshot, "SETTLE", 0.2)
    with pytest.raises(errors.LibvirtError, match=r"^thawing the filesystems of vm1: no answer within 0.2 s; the "
                                                  r"thaw guard then said: virtrbd thaw guard: domain vm1: thawed 2"):
        take(world)
    assert world.events[-1] == ("abandon",) and snaps(world) == {"vm1-a": [], "vm1-b": []}
    never.set()


@pytest.mark.parametrize("change, message", [
    (lambda w: w.cluster.pools["rbd"]["vm1-b"].snaps.append("s1"),
     r"^domain vm1: disk vdb \(rbd/vm1-b\) already has a snapshot s1; nothing was created$"),
    (lambda w: setattr(w.dom.XMLDesc, "return_value", domain_xml("rbd:rbd/vm1-a", "file:/var/lib/x.qcow2")),
     r"^domain vm1: disk vdb is not an rbd image; a snapshot of the domain could not hold it$"),
    (lambda w: setattr(w.dom.XMLDesc, "return_value", domain_xml("file:/var/lib/x.qcow2")),
     r"^domain vm1: disk vda is not an rbd image"),
    (lambda w: setattr(w.dom.XMLDesc, "return_value", domain_xml()), r"^domain vm1: has no writable rbd disk$"),
    (lambda w: setattr(w.lv.conn.lookupByName, "side_effect", libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "no")),
     r"^domain vm1: not defined on qemu:///system$"),
])
def test_bad_domains_are_one_line_and_nothing_is_created_or_frozen(world, change, message):
    change(world)
    before = snaps(world)
    with pytest.raises(errors.VirtrbdError, match=message):
        take(world)
    assert snaps(world) == before and world.events == []


@pytest.mark.parametrize("options, message", [
    ({"freeze_timeout": 0}, "invalid freeze timeout 0"), ({"freeze_timeout": -1.5}, "invalid freeze timeout -1.5"),
    ({"freeze_timeout": float("nan")}, "invalid freeze timeout nan"), ({"quiesce": "maybe"}, "invalid quiesce"),
    ({"snapshot": "a b"}, "invalid snapshot name"),
])
def test_bad_requests_are_refused_before_libvirt_is_asked(world, options, message):
    with pytest.raises(errors.UsageError, match=message):
        take(world, **options)
    world.lv.open.assert_not_called()


def test_the_record_goes_with_its_snapshot(world):
    take(world)
    image = world.cluster.pools["rbd"]["vm1-a"]
    drop_record(image, "s1")
    drop_record(image, "never-recorded")                                 # nothing to drop: no error
    assert ConsistencyRecord.key("s1") not in image.metadata


def test_a_record_made_for_another_snapshot_of_that_name_is_ignored():
    image = FakeCluster().add("rbd", "x", size=4096)
    image.snaps.append("s1")
    image.metadata_set(ConsistencyRecord.key("s1"), ConsistencyRecord(7, "application", UUID, "vm1", ("rbd/x",))
                       .to_json())
    assert ConsistencyRecord.read(image, "s1", 1) is None                # a clone's inherited copy, or a reused name
    assert ConsistencyRecord.read(image, "s1", 7).consistency == "application"
    image.metadata_set(ConsistencyRecord.key("s1"), "{not json")
    assert ConsistencyRecord.read(image, "s1", 7) is None


# --- the guard's own process, against libvirt's test driver -------------------------------------------------

TEST_URI = "test:///default"


@pytest.fixture(scope="module")
def test_domain_uuid() -> str:
    conn = libvirt.open(TEST_URI)
    try:
        return conn.lookupByName("test").UUIDString()
    finally:
        conn.close()


def test_the_guard_thaws_at_once_when_the_freezer_ends_without_done(test_domain_uuid):
    guard = ThawGuard(TEST_URI, test_domain_uuid, 30.0)
    guard.arm("thaw")
    started = time.monotonic()
    assert guard.abandon(10) == ("virtrbd thaw guard: domain test: thawed 0 filesystem(s) "
                               "(virtrbd ended without undoing it)")
    assert time.monotonic() - started < 5                               # not at the deadline
    assert guard._proc.wait(5) == 0


def test_the_guard_thaws_at_its_deadline_while_the_freezer_hangs(test_domain_uuid):
    guard = ThawGuard(TEST_URI, test_domain_uuid, 0.3)
    guard.arm("thaw")
    assert guard._line(time.monotonic() + 5).endswith("(still held 0.3 s after the freeze)")
    assert guard.expired()


def test_the_guard_does_nothing_after_done_or_when_never_armed(test_domain_uuid):
    for armed in (True, False):
        guard = ThawGuard(TEST_URI, test_domain_uuid, 30.0)
        if armed:
            guard.arm("thaw")
            guard.done()
        else:
            guard._finish()
        assert guard._proc.wait(5) == 0 and guard._line(time.monotonic() + 1) == ""


def test_the_guard_is_in_a_session_of_its_own_and_ignores_the_terminals_signals(test_domain_uuid):
    import os
    import signal
    guard = ThawGuard(TEST_URI, test_domain_uuid, 30.0)
    assert os.getsid(guard.pid) == guard.pid != os.getsid(0)
    guard.arm("thaw")
    for sig in (signal.SIGHUP, signal.SIGINT):
        os.kill(guard.pid, sig)
    time.sleep(0.2)
    assert guard._proc.poll() is None                                   # still there, still armed
    os.kill(guard.pid, signal.SIGTERM)                                  # a shutdown: it thaws first
    assert "thawed 0 filesystem(s) (the guard was terminated)" in guard._line(time.monotonic() + 5)


def test_a_guard_that_cannot_reach_the_domain_stops_the_freeze_before_it_starts():
    with pytest.raises(errors.LibvirtError, match=r"^the thaw guard did not start: error: domain "
                                                  r"00000000-0000-0000-0000-000000000000: .*nothing was frozen$"):
        ThawGuard(TEST_URI, "00000000-0000-0000-0000-000000000000", 1.0)


# --- a domain's disks backed up as one set ------------------------------------------------------------------

def with_spec(world) -> None:
    world.storage.spec = functools.partial(Storage.spec, world.storage)


def test_a_set_is_refused_when_only_some_disks_have_the_snapshot(world, tmp_path):
    with_spec(world)
    world.cluster.pools["rbd"]["vm1-b"].snaps.append("s1")
    (tmp_path / "dest").mkdir()
    with pytest.raises(errors.UsageError, match=r"^domain vm1: snapshot s1 is on vdb but not on vda; name a new "
                                                r"snapshot, or one every disk has$"):
        domain_backup.backup_domain(world.storage, "vm1", "s1", tmp_path / "dest", libvirt_module=world.lv)
    assert world.events == [] and list((tmp_path / "dest").iterdir()) == []


@pytest.mark.parametrize("dest, options, words", [
    ("missing", {}, "not a directory"),
    (".", {"since": "s1"}, "is the snapshot being backed up"),
    (".", {"since": "a b"}, "invalid snapshot name"),
    (".", {"format": "vmdk"}, "unknown backup format"),
    (".", {"freeze_timeout": 0}, "invalid freeze timeout"),
])
def test_a_bad_set_request_is_refused_before_anything_is_frozen_or_taken(world, tmp_path, dest, options, words):
    with_spec(world)
    with pytest.raises(errors.UsageError, match=words):
        domain_backup.backup_domain(world.storage, "vm1", "s1", tmp_path / dest, libvirt_module=world.lv, **options)
    assert world.events == [] and snaps(world) == {"vm1-a": [], "vm1-b": []}


def test_the_consistency_of_an_existing_snapshot_is_what_every_disk_recorded(world):
    take(world)
    facts = types.SimpleNamespace(uuid=UUID, disks=[types.SimpleNamespace(image=ImageSpec("rbd", name))
                                                    for name in ("vm1-a", "vm1-b")])
    assert domain_backup._recorded(world.storage, facts, "s1") == "application"
    world.cluster.pools["rbd"]["vm1-b"].metadata.clear()                 # one disk without its record
    assert domain_backup._recorded(world.storage, facts, "s1") == "unknown"
