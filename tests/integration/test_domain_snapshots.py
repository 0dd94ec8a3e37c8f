"""Snapshots of running domains at one instant (issue 18), judged by a real Linux guest: the records it wrote on
two ext4 data disks, read from RAW backups of the snapshots with ``debugfs`` and checked with ``e2fsck -fn``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import libvirt
import libvirt_qemu
import pytest

from virtrbd import backup
from virtrbd.backup.formats import manifest as manifests

from ..cli_helpers import assert_one_line_error, virtrbd
from ..ledger import LEDGER
from .test_guests import golden, guests, installed_hook, records_in, vm  # noqa: F401 - fixtures

FREEZE_TIMEOUT = 4


@pytest.fixture
def domain(lab, golden, guests, storage):  # noqa: F811 - the fixtures imported above
    """A running guest on three persistent clones of the golden image (ext4): vda, and vdb and vdc for data."""
    name, = guests()
    for data in ("b", "c"):
        storage.clone(golden, f"rbd/{name}-{data}")
    made = vm(lab, "create", name, "--disk", f"rbd/{name}-a,rbd/{name}-b,rbd/{name}-c", "--clone-of", golden)
    assert made.code == 0, made.err
    return name


def in_guest(lab, name: str, *argv: str) -> str:
    done = vm(lab, "exec", name, "--", *argv)
    assert done.code == 0, done.err
    return done.out.strip()


def snap_create(lab, name: str, snapshot: str, *options: str):
    return virtrbd("snap", "create", "--domain", name, "--name", snapshot, *options, env=lab.env, timeout=120)


def judged(storage, image: str, snapshot: str, tmp_path) -> tuple[str, int, int]:
    """e2fsck's verdict on a RAW backup of IMAGE@SNAP ("clean", "needs journal replay" or its output), the last
    valid record and the number of records (every one of them checked by ``records_in``)."""
    made = backup.backup(storage, f"{image}@{snapshot}", tmp_path)
    fsck = subprocess.run(["e2fsck", "-fn", str(made.path)], capture_output=True, text=True)
    said = fsck.stdout + fsck.stderr
    verdict = ("needs journal replay" if "journal recovery" in said else
               "clean" if fsck.returncode == 0 else said)
    last, lines = records_in(made.path)
    made.path.unlink()
    return verdict, last, len(lines)


def consistent_pair(storage, name: str, snapshot: str, tmp_path, durable_before: int) -> tuple[int, int]:
    b_verdict, b_last, b_count = judged(storage, f"rbd/{name}-b", snapshot, tmp_path)
    c_verdict, c_last, c_count = judged(storage, f"rbd/{name}-c", snapshot, tmp_path)
    assert (b_verdict, c_verdict) == ("clean", "clean"), snapshot
    assert b_last >= durable_before and c_last >= durable_before, (snapshot, b_last, c_last, durable_before)
    assert c_last <= b_last <= c_last + 1, (snapshot, b_last, c_last)        # one instant: vdb is written first
    assert (b_count, c_count) == (b_last, c_last)
    return b_last, c_last


def consistency_listed(lab, image: str) -> dict[str, str]:
    listed = virtrbd("snap", "ls", image, env=lab.env)
    assert listed.code == 0, listed.err
    return {line.split()[0]: line.split()[-1] for line in listed.out.splitlines()[1:]}


def test_require_takes_both_data_disks_at_one_frozen_instant_and_off_says_crash(lab, domain, storage, tmp_path):
    in_guest(lab, domain, "records", "start", "vdb", "vdc")
    time.sleep(1)
    durable = int(in_guest(lab, domain, "records", "durable"))
    frozen = snap_create(lab, domain, "app", "--quiesce", "require")
    assert frozen.code == 0, frozen.err
    assert "application-consistent (3 filesystem(s) frozen for" in frozen.out
    time.sleep(0.5)
    crashed = snap_create(lab, domain, "crash", "--quiesce", "off")
    assert crashed.code == 0 and "crash-consistent (paused for" in crashed.out, crashed.err
    in_guest(lab, domain, "records", "stop")
    assert consistency_listed(lab, f"rbd/{domain}-b") == {"app": "application", "crash": "crash"}
    b_last, c_last = consistent_pair(storage, domain, "app", tmp_path, durable)
    assert b_last > 0
    # beside it, the crash-consistent one: the journal needs replaying, which is what its label tells
    assert judged(storage, f"rbd/{domain}-b", "crash", tmp_path)[0] == "needs journal replay"


def test_twenty_snapshots_in_a_row_are_consistent_and_the_writes_never_stall_past_the_freeze(lab, domain, storage,
                                                                                             tmp_path):
    in_guest(lab, domain, "records", "start", "vdb", "vdc")
    time.sleep(0.5)
    longest_before = int(in_guest(lab, domain, "records", "longest"))
    taken = []
    for index in range(20):
        durable = int(in_guest(lab, domain, "records", "durable"))
        made = storage.snapshot_domain(domain, f"row{index}", quiesce="require", freeze_timeout=FREEZE_TIMEOUT)
        taken.append((made, durable))
    longest = int(in_guest(lab, domain, "records", "longest"))
    in_guest(lab, domain, "records", "stop")
    windows = [made.seconds["window"] for made, _ in taken]
    assert all(made.consistency == "application" for made, _ in taken)
    # the writer's longest round (its own write and sync included) stays within the longest freeze plus 1 s
    assert longest <= (max(windows) + 1) * 1000, (longest, longest_before, max(windows))
    lasts = [consistent_pair(storage, domain, made.snapshot, tmp_path, durable) for made, durable in taken]
    assert lasts == sorted(lasts) and lasts[-1][0] > lasts[0][0]           # the guest went on writing between


def mon_pid(lab) -> int:
    state = lab.lab._read_state()
    return next(d["pid"] for d in state["daemons"] if d["name"] == "mon.a")


def guard_started(uuid: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", f"virtrbd.libvirt.thaw_guard .* {uuid} "], capture_output=True)
        if found.returncode == 0:
            return True
        time.sleep(0.005)
    return False


def freeze_status(lab, name: str) -> str:
    conn = libvirt.open(lab.config.libvirt.uri)
    try:
        reply = libvirt_qemu.qemuAgentCommand(conn.lookupByName(name), '{"execute":"guest-fsfreeze-status"}', 5, 0)
    finally:
        conn.close()
    return reply.split('"return":"')[1].split('"')[0]


def wait_for_status(lab, name: str, wanted: str, within: float) -> float | None:
    """Seconds until the guest's freeze status is ``wanted``, or None."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            if freeze_status(lab, name) == wanted:
                return time.monotonic() - started
        except libvirt.libvirtError:
            pass                          # the agent is busy with the freeze or the thaw
        time.sleep(0.05)
    return None


def domain_uuid(lab, name: str) -> str:
    conn = libvirt.open(lab.config.libvirt.uri)
    try:
        return conn.lookupByName(name).UUIDString()
    finally:
        conn.close()


def snapshot_with_the_monitor_stopped(lab, name: str, snapshot: str):
    """``snap create --domain`` in a child process of its own session (as a terminal's job would be), the monitor
    stopped (SIGSTOP) as soon as the guard starts, so that the guest is frozen and the snapshots wait for Ceph.
    The child, and the monitor's pid."""
    child = subprocess.Popen([sys.executable, "-m", "virtrbd", "snap", "create", "--domain", name, "--name", snapshot,
                              "--freeze-timeout", str(FREEZE_TIMEOUT)], env={**os.environ, **lab.env},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    mon = mon_pid(lab)
    if not guard_started(domain_uuid(lab, name), time.monotonic() + 30):
        child.kill()
        pytest.fail(f"no thaw guard started: {child.communicate()}")
    os.kill(mon, signal.SIGSTOP)
    return child, mon


@pytest.mark.parametrize("how", ["SIGKILL of virtrbd", "SIGHUP of its terminal's process group"])
def test_virtrbd_ended_while_the_guest_is_frozen_thaws_it_at_once_and_it_writes_again(lab, domain, storage, how):
    in_guest(lab, domain, "records", "start", "vdb")
    child, mon = snapshot_with_the_monitor_stopped(lab, domain, "ended")
    try:
        assert wait_for_status(lab, domain, "frozen", 10) is not None
        if how.startswith("SIGKILL"):
            child.kill()
        else:
            os.killpg(child.pid, signal.SIGHUP)     # the terminal hung up: virtrbd's whole job, not the guard
        ended = time.monotonic()
    finally:
        os.kill(mon, signal.SIGCONT)      # the snapshot the process asked for may end now
    child.communicate(timeout=120)
    thawed = wait_for_status(lab, domain, "thawed", FREEZE_TIMEOUT + 1)
    in_time = thawed is not None and time.monotonic() - ended <= FREEZE_TIMEOUT + 1
    durable = int(in_guest(lab, domain, "records", "durable"))
    time.sleep(1)
    writing = int(in_guest(lab, domain, "records", "durable")) > durable
    in_guest(lab, domain, "records", "stop")
    assert LEDGER.fault(f"{how} while the guest is frozen: thawed in time, writing again",
                        in_time and writing), (thawed, writing)


def test_a_monitor_stopped_during_the_snapshot_thaws_fails_in_one_line_and_leaves_no_snapshot(lab, domain, storage):
    """While the monitor is stopped, librbd holds the guest's writes to the disks whose snapshot waits for it,
    and the agent's thaw waits with them; the guard's thaw, asked at the freeze timeout, ends once Ceph answers."""
    child, mon = snapshot_with_the_monitor_stopped(lab, domain, "monless")
    try:
        time.sleep(FREEZE_TIMEOUT + 1)
    finally:
        os.kill(mon, signal.SIGCONT)
    thawed = wait_for_status(lab, domain, "thawed", 10) is not None
    out, err = child.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    one_line = child.returncode != 0 and len(lines) == 1 and lines[0].startswith("virtrbd: ")
    left = [disk for disk in "abc" if "monless" in [s.name for s in storage.list_snapshots(f"rbd/{domain}-{disk}")]]
    assert LEDGER.fault("the monitor stopped during a domain snapshot: thawed, one line, no snapshot left",
                        thawed and one_line and not left), (thawed, err, left)
    assert "took longer than the freeze timeout" in lines[0]


def test_require_without_an_agent_creates_nothing_and_auto_says_crash(lab, domain, storage):
    in_guest(lab, domain, "sh", "-c", "(sleep 0.5; killall qemu-ga) >/dev/null 2>&1 &")
    time.sleep(1.5)
    refused = snap_create(lab, domain, "noagent", "--quiesce", "require")
    nothing = all(storage.list_snapshots(f"rbd/{domain}-{disk}") == [] for disk in "abc")
    LEDGER.fault("no guest agent, --quiesce require: one line, nothing created",
                 refused.code == 1 and len(refused.err_lines) == 1 and nothing)
    assert_one_line_error(refused, 1, "could not be frozen", "nothing was created (--quiesce require)")
    assert nothing
    settled = snap_create(lab, domain, "noagent", "--quiesce", "auto")
    assert settled.code == 0 and "crash-consistent (paused for" in settled.out, settled.err
    assert "the guest agent did not freeze the filesystems" in settled.out
    assert consistency_listed(lab, f"rbd/{domain}-c") == {"noagent": "crash"}


def test_a_domain_that_is_off_is_labelled_by_how_it_stopped(lab, domain, storage, tmp_path):
    assert vm(lab, "stop", domain).code == 0                             # a clean shutdown
    clean = snap_create(lab, domain, "off-clean", "--quiesce", "require")
    assert clean.code == 0 and "application-consistent (not frozen)" in clean.out, clean.err
    assert judged(storage, f"rbd/{domain}-b", "off-clean", tmp_path)[0] == "clean"
    conn = libvirt.open(lab.config.libvirt.uri)
    try:
        dom = conn.lookupByName(domain)
        dom.create()
        time.sleep(1)
        dom.destroy()                                                   # a power cut
    finally:
        conn.close()
    assert consistency_listed(lab, f"rbd/{domain}-b") == {"off-clean": "application"}
    refused = snap_create(lab, domain, "off-cut", "--quiesce", "require")
    assert_one_line_error(refused, 1, "off without a clean shutdown", "nothing was created")
    cut = snap_create(lab, domain, "off-cut")
    assert cut.code == 0 and "crash-consistent (not frozen)" in cut.out, cut.err


def test_bad_input_is_one_line_and_nothing_is_created_or_frozen(lab, domain, storage):
    storage.create_snapshot(f"rbd/{domain}-c@taken")
    conn = libvirt.open(lab.config.libvirt.uri)
    file_only = f"{domain}-files"
    mixed = f"{domain}-mixed"
    rbd_disk = conn.lookupByName(domain).XMLDesc(0).split("<disk ")[1].split("</disk>")[0]
    try:
        conn.defineXML(f"<domain type='qemu'><name>{file_only}</name><memory unit='MiB'>64</memory><os><type>hvm"
                       f"</type></os><devices><disk type='file' device='disk'><source file='/var/tmp/x.img'/>"
                       f"<target dev='vda' bus='virtio'/></disk></devices></domain>")
        conn.defineXML(f"<domain type='qemu'><name>{mixed}</name><memory unit='MiB'>64</memory><os><type>hvm"
                       f"</type></os><devices><disk {rbd_disk}</disk><disk type='file' device='disk'>"
                       f"<source file='/var/tmp/x.img'/><target dev='vdb' bus='virtio'/></disk></devices></domain>")
        cases = [
            (("--domain", "no-such-domain", "--name", "x"), 1, "domain no-such-domain: not defined"),
            (("--domain", domain, "--name", "taken"), 2, f"disk vdc (rbd/{domain}-c) already has a snapshot taken"),
            (("--domain", file_only, "--name", "x"), 2, "disk vda is not an rbd image"),
            (("--domain", mixed, "--name", "x"), 2, "disk vdb is not an rbd image"),
            (("--domain", domain, "--name", "x", "--freeze-timeout", "0"), 2, "invalid freeze timeout 0"),
            (("--domain", domain, "--name", "x", "--freeze-timeout", "-3"), 2, "invalid freeze timeout -3"),
            (("--domain", domain, "--name", "bad name"), 2, "invalid snapshot name"),
            (("--domain", domain), 2, "snap create --domain NAME --name SNAP"),
            (("rbd/x@y", "--domain", domain, "--name", "x"), 2, "takes no POOL/IMAGE@SNAP"),
        ]
        for args, code, words in cases:
            refused = virtrbd("snap", "create", *args, env=lab.env)
            untouched = [s.name for s in storage.list_snapshots(f"rbd/{domain}-c")] == ["taken"]
            LEDGER.bad_input(f"snap create {' '.join(args)}", refused.code == code and len(refused.err_lines) == 1
                             and words in refused.err and untouched)
            assert_one_line_error(refused, code, words)
    finally:
        for name in (file_only, mixed):
            conn.lookupByName(name).undefine()
        conn.close()
    assert freeze_status(lab, domain) == "thawed"
    for disk in "ab":
        assert storage.list_snapshots(f"rbd/{domain}-{disk}") == []
    assert [s.name for s in storage.list_snapshots(f"rbd/{domain}-c")] == ["taken"]


def same_content(storage, one: str, other: str) -> bool:
    """Whether two images (or snapshots) hold the same bytes, read in 4 MiB pieces."""
    a, b = storage.spec(one), storage.spec(other)
    with storage.cluster.image(a.pool, a.image, snapshot=a.snapshot, read_only=True) as left, \
            storage.cluster.image(b.pool, b.image, snapshot=b.snapshot, read_only=True) as right:
        size = left.size()
        if size != right.size():
            return False
        return all(left.read(offset, 4 << 20) == right.read(offset, 4 << 20) for offset in range(0, size, 4 << 20))


def test_a_domains_disks_back_up_as_one_set_and_restore_as_one(lab, domain, storage, tmp_path):
    in_guest(lab, domain, "records", "start", "vdb", "vdc")
    time.sleep(1)
    first = virtrbd("backup", "--domain", domain, "--name", "set1", str(tmp_path), "--quiesce", "require",
                    env=lab.env, timeout=300)
    assert first.code == 0, first.err
    assert first.out.splitlines()[-1] == f"domain {domain}: 3 disk(s) at set1, application-consistent"
    time.sleep(1)
    second = virtrbd("backup", "--domain", domain, "--name", "set2", str(tmp_path), "--since", "set1",
                     env=lab.env, timeout=300)
    assert second.code == 0, second.err
    in_guest(lab, domain, "records", "stop")
    for disk in "abc":
        found = manifests.resolve(tmp_path / f"rbd~{domain}-{disk}~set1~set2.rbddiff")
        assert found.domain["consistency"] == "application" and found.domain["name"] == domain
        assert [d["file"] for d in found.domain["disks"]] == [f"rbd~{domain}-{x}~set1~set2.rbddiff" for x in "abc"]
    restored = virtrbd("restore", str(tmp_path / f"rbd~{domain}-c~set1~set2.rbddiff"), "--domain-set",
                       "--suffix=-back", "--snapshot", env=lab.env, timeout=300)
    assert restored.code == 0 and len(restored.out.splitlines()) == 3, restored.err
    for disk in "abc":
        same = same_content(storage, f"rbd/{domain}-{disk}@set2", f"rbd/{domain}-{disk}-back@set2")
        assert LEDGER.restore(f"a domain's set (full + incremental), disk {disk}", same), disk
    consistent_pair(storage, f"{domain}", "set2", tmp_path, 1)      # the originals, one instant
    b = judged(storage, f"rbd/{domain}-b-back", "set2", tmp_path)
    c = judged(storage, f"rbd/{domain}-c-back", "set2", tmp_path)
    assert b[0] == c[0] == "clean" and c[1] <= b[1] <= c[1] + 1


def test_a_set_with_a_backup_missing_restores_nothing(lab, domain, storage, tmp_path):
    made = storage.backup_domain(domain, "lone", tmp_path)
    assert made.consistency == "application" and len(made.backups) == 3
    made.backups[1].path.unlink()
    refused = virtrbd("restore", str(made.backups[0].path), "--domain-set", "--suffix=-x", env=lab.env)
    clean = refused.code != 0 and len(refused.err_lines) == 1
    nothing = not any(storage.image_exists(f"rbd/{domain}-{disk}-x") for disk in "abc")
    LEDGER.bad_input("restore --domain-set with one backup of the set missing", clean and nothing)
    assert clean and nothing, refused.err
    (tmp_path / "alone").mkdir()
    alone = storage.backup(f"rbd/{domain}-a@lone", tmp_path / "alone")
    refused = virtrbd("restore", str(alone.path), "--domain-set", env=lab.env)
    assert_one_line_error(refused, 2, "not one of a domain's set of backups")
