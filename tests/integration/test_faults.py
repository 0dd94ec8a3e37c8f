"""Faults on a lab of its own: a monitor down, OSDs killed during backups, clones and flattens, one OSD of three lost.

The lab here has three bluestore OSDs (a killed bluestore OSD keeps its data)
and pool size 2.  While a fault lasts, the tests use a config that sets every
timeout to 3 s so the fault shows within seconds; once the daemons are back,
reruns and checks use the lab's own config (10 s, virtrbd's default), as an
operator would: on a loaded machine the first operations after a restart may
take longer than 3 s without anything being wrong.  Each test brings every
daemon back before it ends, whatever happens.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import pytest

from virtrbd import Storage, config, errors, hook_install
from virtrbd.backup import leftovers
from virtrbd.lab import CephSpec, Lab, faults
from virtrbd.lab.domains import domain_xml, remove_domain, wait_for_reads

from ..cli_helpers import virtrbd
from ..ledger import LEDGER
from .fault_clients import HUNG, JudgeDied, ended, fill, judged, kill_all_osds, run_client, start_all_osds

TIMEOUT = 3
REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
CLONES_FAULT = "all OSDs killed during 60 clones: no half-made clone passed off, rerun converges"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fault_lab(lab):
    """A second lab (three bluestore OSDs, pool size 2) beside the main one: (lab, 3-second config, its config)."""
    root = Path(tempfile.mkdtemp(prefix="virtrbd-faults-"))
    flab = Lab(root / "lab")
    flab.up(CephSpec(port=40800, osds=3, store="bluestore", store_bytes=4 << 30), with_libvirt=True)
    text = flab.conf_file.read_text().replace(
        "[ceph]\n", f"[ceph]\nclient_mount_timeout = {TIMEOUT}\nrados_mon_op_timeout = {TIMEOUT}\n"
                    f"rados_osd_op_timeout = {TIMEOUT}\n", 1)
    quick = root / "quick.conf"
    quick.write_text(text)
    yield flab, config.load(quick), config.load(flab.conf_file)
    flab.down()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def everything_back(fault_lab):
    """Whatever a test stops, it is started again afterwards."""
    flab = fault_lab[0]
    yield
    faults.start(flab, *faults.stopped(flab))


def cli(conf, *args, timeout=60):
    return virtrbd("--config", str(conf.path), *args, timeout=timeout)


def digest(storage, spec: str) -> str:
    pool, _, rest = spec.partition("/")
    image, _, snap = rest.partition("@")
    h = hashlib.sha256()
    with storage.cluster.image(pool, image, snapshot=snap or None, read_only=True) as img:
        for offset in range(0, img.size(), 4 * MiB):
            h.update(img.read(offset, min(4 * MiB, img.size() - offset)))
    return h.hexdigest()


# --- a monitor down ---------------------------------------------------------------------------

def test_monitor_down_every_operation_fails_in_time_then_all_work_again(fault_lab, everything_back, tmp_path):
    flab, conf, steady = fault_lab
    tag = uuid.uuid4().hex[:6]
    with Storage(conf) as storage:
        fill(storage, f"m{tag}", 8 * MiB, 2 * MiB)
        storage.make_golden(f"m{tag}")
        storage.create_snapshot(f"m{tag}@s")
    backups = tmp_path / "backups"
    backups.mkdir()
    cli(conf, "backup", f"m{tag}@s", str(backups))
    backup_file = next(p for p in backups.iterdir() if p.suffix == ".raw")
    operations = [
        ("ls",), ("create", f"m{tag}-new", "--size", "1M"), ("info", f"m{tag}"), ("snap", "ls", f"m{tag}"),
        ("snap", "create", f"m{tag}@t"), ("clone", f"m{tag}@golden", f"m{tag}-c"), ("children", f"m{tag}"),
        ("flatten", f"m{tag}"), ("rm", f"m{tag}"), ("resize", f"m{tag}", "--size", "16M"),
        ("backup", f"m{tag}@s", str(backups), "--format", "qcow2"), ("restore", str(backup_file), f"m{tag}-r"),
        ("verify", str(backup_file), "--against", f"m{tag}@s"), ("config", "check"),
        ("golden", "create", f"m{tag}"),
    ]
    faults.stop(flab, "mon.a", kill=True)
    with ThreadPoolExecutor(3) as pool:     # a few at a time: the clock is on each, not on the machine
        timed = list(pool.map(lambda args: _timed(cli, conf, *args), operations))
    api_started = time.monotonic()
    with pytest.raises(errors.ConnectionFailedError, match="no monitor reachable"):
        Storage(conf).__enter__()
    api_seconds = time.monotonic() - api_started
    hook_code, hook_err, hook_seconds = _hook_prepare(conf, f"rbd/m{tag}-vm", f"rbd/m{tag}@golden", tmp_path)
    faults.start(flab, "mon.a")

    failures = [f"{' '.join(args)}: exit {r.code}, {seconds:.1f} s, {r.err.strip()!r}"
                for args, (r, seconds) in zip(operations, timed, strict=True)
                if r.code != 1 or len(r.err_lines) != 1 or "no monitor reachable" not in r.err
                or seconds > TIMEOUT + 2]
    if not (hook_code == 1 and "no monitor reachable" in hook_err and hook_seconds <= TIMEOUT + 2):
        failures.append(f"hook prepare: exit {hook_code}, {hook_seconds:.1f} s, {hook_err!r}")
    if api_seconds > TIMEOUT + 2:
        failures.append(f"Storage(): {api_seconds:.1f} s")
    again = [cli(steady, "ls"), cli(steady, "clone", f"m{tag}@golden", f"m{tag}-c"),
             cli(steady, "info", f"m{tag}-c")]
    hook_again = _hook_prepare(steady, f"rbd/m{tag}-vm", f"rbd/m{tag}@golden", tmp_path)
    back = all(r.code == 0 for r in again) and hook_again[0] == 0
    LEDGER.fault("monitor down: every operation fails in time, works again after", not failures and back)
    assert failures == []
    assert back, [r.err for r in again] + [hook_again[1]]


def _timed(function, *args):
    started = time.monotonic()
    result = function(*args)
    return result, time.monotonic() - started


def _hook_prepare(conf, image: str, golden: str, tmp_path: Path):
    """libvirt's call, as libvirtd makes it: the installed script, its environment, the domain on stdin."""
    script = tmp_path / "hook"
    script.write_text(hook_install.render(conf.path))
    script.chmod(0o755)
    xml = domain_xml(conf, "vm", image, clone_of=golden, ephemeral=True).encode()
    started = time.monotonic()
    done = subprocess.run([str(script), "vm", "prepare", "begin", "-"], input=xml, capture_output=True,
                          env={"LC_ALL": "C", "HOME": "/root", "PATH": "/usr/bin:/bin"})
    return done.returncode, done.stderr.decode(), time.monotonic() - started


# --- OSDs killed in the middle of work ---------------------------------------------------------

def test_osds_killed_during_a_backup_leave_no_file_and_a_rerun_succeeds(fault_lab, everything_back, tmp_path):
    flab, conf, steady = fault_lab
    tag = uuid.uuid4().hex[:6]
    with Storage(conf) as storage:
        fill(storage, f"b{tag}", 512 * MiB, 400 * MiB)
        storage.create_snapshot(f"b{tag}@s")
    dest = tmp_path / "dest"
    dest.mkdir()
    command = [sys.executable, "-m", "virtrbd", "--config", str(conf.path), "backup", f"b{tag}@s", str(dest)]
    backup = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_file(dest, backup)
    kill_all_osds(flab)
    out, err = backup.communicate(timeout=60)
    left = sorted(p.name for p in dest.iterdir())
    start_all_osds(flab)
    rerun = cli(steady, "backup", f"b{tag}@s", str(dest))
    assert rerun.code == 0, f"rerun: {rerun.err} (first run said: {err!r}; left: {left})"
    with Storage(steady) as storage:
        restored = cli(steady, "restore", str(next(dest.glob("*.raw"))), f"b{tag}-r")
        same = restored.code == 0 and digest(storage, f"rbd/b{tag}-r") == digest(storage, f"rbd/b{tag}@s")
    LEDGER.restore("backup after OSDs came back", same)
    survived = backup.returncode != 0 and left == [] and rerun.code == 0 and same
    LEDGER.fault("all OSDs killed during a backup: no file, rerun succeeds", survived)
    assert backup.returncode != 0 and len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert left == [], f"left behind: {left}"
    assert rerun.code == 0, rerun.err
    assert same


def _sigterm_when_blocked(process: subprocess.Popen, flab) -> tuple[float, str]:
    """Kill every OSD, let the command block on them, send one SIGTERM; (seconds until it ended, its stderr)."""
    kill_all_osds(flab)
    time.sleep(1.5)
    assert process.poll() is None, f"ended before it could be interrupted: {process.communicate()}"
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running 30 s after SIGTERM: {process.communicate()}") from None
    return time.monotonic() - sent, err


def test_one_sigterm_ends_a_backup_and_a_restore_blocked_on_dead_osds_within_a_second(fault_lab, everything_back,
                                                                                      tmp_path):
    """What systemd's stop or an agent's cancel does: one SIGTERM, then a second's wait."""
    flab, conf, steady = fault_lab
    tag = uuid.uuid4().hex[:6]
    with Storage(steady) as storage:
        fill(storage, f"t{tag}", 512 * MiB, 300 * MiB)
        storage.create_snapshot(f"t{tag}@s")
    full = tmp_path / "full"
    full.mkdir()
    assert cli(steady, "backup", f"t{tag}@s", str(full)).code == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    backup = subprocess.Popen([sys.executable, "-m", "virtrbd", "--config", str(conf.path), "backup", f"t{tag}@s",
                               str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_file(dest, backup)
    backup_seconds, backup_err = _sigterm_when_blocked(backup, flab)
    backup_left = sorted(p.name for p in dest.iterdir())
    start_all_osds(flab)

    restore = subprocess.Popen([sys.executable, "-m", "virtrbd", "--config", str(conf.path), "restore",
                                str(next(full.glob("*.raw"))), f"t{tag}-r"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_temp_image(steady, restore)
    restore_seconds, restore_err = _sigterm_when_blocked(restore, flab)
    start_all_osds(flab)
    with Storage(steady) as storage:
        temps = [n for n in storage.list_images() if leftovers.is_temp_image(n)]
        deadline = time.monotonic() + 120                     # the killed client's watch expires first
        while any(leftovers.in_use(storage.cluster, "rbd", n) for n in temps) and time.monotonic() < deadline:
            time.sleep(2)
        rerun = cli(steady, "restore", str(next(full.glob("*.raw"))), f"t{tag}-r")
        after = [n for n in storage.list_images() if leftovers.is_temp_image(n)]
    ended = (backup_seconds < 1.0 and restore_seconds < 1.0 and backup_left == [] and rerun.code == 0
             and after == [])
    LEDGER.fault("one SIGTERM to a backup and a restore blocked on dead OSDs: ended within 1 s, nothing left",
                 ended)
    assert backup_seconds < 1.0 and backup.returncode == 130, (backup_seconds, backup.returncode, backup_err)
    assert len(backup_err.splitlines()) == 1 and backup_err.startswith("virtrbd: interrupted"), backup_err
    assert backup_left == [], f"left behind: {backup_left}"
    assert restore_seconds < 1.0 and restore.returncode == 130, (restore_seconds, restore.returncode, restore_err)
    assert len(restore_err.splitlines()) == 1 and restore_err.startswith("virtrbd: interrupted"), restore_err
    assert all(name in restore_err for name in temps), (temps, restore_err)   # named, for the operator
    assert rerun.code == 0 and after == [], (rerun.err, after)


def _wait_until_writing(started: Callable[[], bool], process: subprocess.Popen, what: str,
                        timeout: float = 30) -> None:
    """Until ``started()`` says the command is at work, and 0.2 s more, so that a kill falls while it writes
    (a restore of a few hundred MiB is over within a second: no fixed wait from its start); it must not
    have ended before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started():
            time.sleep(0.2)
            return
        if process.poll() is not None:
            raise AssertionError(f"the {what} ended before it could be interrupted: {process.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"the {what} never started")


def _wait_for_file(dest: Path, process: subprocess.Popen) -> None:
    """Until the backup has started writing (its temporary file is there)."""
    _wait_until_writing(lambda: any(dest.iterdir()), process, "backup")


def _wait_for_temp_image(conf, process: subprocess.Popen) -> None:
    """Until the restore has made its temporary image and writes into it."""
    with Storage(conf) as storage:
        _wait_until_writing(lambda: any(leftovers.is_temp_image(name) for name in storage.list_images()),
                            process, "restore")


@pytest.mark.parametrize("client", ["lives", "dies"])
def test_osds_killed_during_clones_leave_only_whole_clones_and_a_rerun_converges(fault_lab, everything_back,
                                                                                tmp_path, client):
    """The batch runs in one child process, the judge and the rerun in another (see fault_clients).  A
    batch that librados aborts is judged as a crashed client; any other death of a child fails the test.
    ``dies``: the batch's client aborts itself right after the OSDs are killed, so the crashed path is
    judged in every run, not only when librados happens to abort."""
    flab, conf, steady = fault_lab
    state = tmp_path / "clones.json"
    batch = run_client("clones-batch", flab, conf, steady, state, *(["die"] if client == "dies" else []))
    start_all_osds(flab)
    crashed = batch.returncode != 0
    hung = batch.returncode == HUNG
    if client == "dies":
        assert crashed, f"the batch's process should have aborted: {batch.returncode}"
    if crashed and (batch.returncode not in (-signal.SIGABRT, HUNG) or not state.exists()):
        LEDGER.fault(CLONES_FAULT, False)
        pytest.fail(f"the batch's process {ended(batch.returncode)}: {batch.stderr.strip()[:4000]}", pytrace=False)
    try:
        found = judged("clones-inspect", flab, conf, steady, state)
        found.update(judged("clones-rerun", flab, conf, steady, state))
    except JudgeDied as died:
        LEDGER.fault(CLONES_FAULT, False)
        pytest.fail(str(died), pytrace=False)
    assert found["crashed"] == crashed
    survived = ((crashed or found["error"] is not None) and not found["hidden"] and found["converged"]
                and found["rerun"] == found["children"] and not found["replaced"])
    if client == "dies":
        LEDGER.fault(CLONES_FAULT.replace("during 60 clones", "during 60 clones, the client aborting"), survived)
    elif crashed:     # said, not hidden: the batch's own report could not be checked in this run
        how = "hung in librbd" if hung else "aborted in librados"
        LEDGER.fault(CLONES_FAULT + f" (the client {how}: judged as a crash)", survived)
        warnings.warn(f"the clone batch's process {how}: {batch.stderr.strip()[:300]}", stacklevel=1)
    else:
        LEDGER.fault(CLONES_FAULT, survived)
    if not crashed:
        assert found["error"] is not None, f"the batch did not notice the dead OSDs ({found['existing']} made)"
    assert found["hidden"] == [], f"half-made clones not reported as failed: {found['hidden']} ({found['error']})"
    assert found["converged"] and found["replaced"] == [], found


def test_osds_killed_during_a_flatten_then_the_rerun_completes(fault_lab, everything_back):
    flab, conf, steady = fault_lab
    tag = uuid.uuid4().hex[:6]
    with Storage(conf) as storage:
        fill(storage, f"f{tag}", 512 * MiB, 384 * MiB)
        golden = str(storage.make_golden(f"f{tag}"))
        storage.clone(golden, f"f{tag}-c")
        expected = digest(storage, golden)
    flatten = subprocess.Popen([sys.executable, "-m", "virtrbd", "--config", str(conf.path), "flatten",
                                f"f{tag}-c"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    kill_all_osds(flab)
    _, err = flatten.communicate(timeout=60)
    start_all_osds(flab)
    rerun = cli(steady, "flatten", f"f{tag}-c")
    with Storage(steady) as storage:
        whole = storage.info(f"f{tag}-c").parent_chain == () and digest(storage, f"rbd/f{tag}-c") == expected
    LEDGER.restore("flattened clone after OSDs came back", whole)
    LEDGER.fault("all OSDs killed during a flatten: rerun completes it", flatten.returncode != 0 and whole)
    assert flatten.returncode != 0, "the flatten finished before the OSDs were killed: make the image larger"
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert rerun.code == 0, rerun.err
    assert whole


def test_a_long_lived_connection_works_again_after_an_outage(fault_lab, everything_back):
    """An agent keeps its Storage open across an outage: the operation after it must work."""
    flab, conf, _ = fault_lab
    tag = uuid.uuid4().hex[:6]
    with Storage(conf) as storage:
        storage.create_image(f"l{tag}", MiB)
        kill_all_osds(flab)
        with pytest.raises(errors.OperationTimeoutError):
            storage.create_snapshot(f"l{tag}@during")
        start_all_osds(flab)
        storage.create_snapshot(f"l{tag}@after")
        works = [s.name for s in storage.list_snapshots(f"l{tag}")][-1:] == ["after"]
    LEDGER.fault("all OSDs killed under a long-lived connection: it works again after", works)
    assert works


# --- one OSD of three lost ---------------------------------------------------------------------

def test_one_osd_of_three_lost_backups_clones_and_domain_starts_keep_working(fault_lab, everything_back,
                                                                             tmp_path, lab):
    """Once the monitors have marked the dead OSD down (seconds here; until then I/O to the PGs it led
    waits, as in any Ceph cluster), everything works on the two left, with the lab's usual config."""
    flab, _, steady = fault_lab
    tag = uuid.uuid4().hex[:6]
    with Storage(steady) as storage:
        fill(storage, f"o{tag}", 64 * MiB, 32 * MiB)
        golden = str(storage.make_golden(f"o{tag}"))
    faults.stop(flab, "osd.1", kill=True)
    faults.wait_marked_down(flab, "osd.1")
    backups = tmp_path / "b"
    backups.mkdir()
    backup = cli(steady, "backup", golden, str(backups))
    clones = cli(steady, "clone", golden, *[f"o{tag}-{i}" for i in range(10)])
    started = _start_a_domain(flab, steady, golden, f"o{tag}")
    raw = next(backups.glob("*.raw"), None)
    with Storage(steady) as storage:
        restore = cli(steady, "restore", str(raw), f"o{tag}-r") if raw else None
        same = restore is not None and restore.code == 0 and \
            digest(storage, f"rbd/o{tag}-r") == digest(storage, golden)
    LEDGER.restore("restore with one OSD of three down", same)
    survived = backup.code == 0 and clones.code == 0 and started and same
    LEDGER.fault("one OSD of three killed: backups, clones, domain starts go on", survived)
    assert backup.code == 0, backup.err
    assert clones.code == 0, clones.err
    assert started
    assert restore.code == 0, restore.err
    assert same


def _start_a_domain(flab, conf, golden: str, tag: str) -> bool:
    """A domain of the fault lab, cloned by the hook (installed for this lab's config for the while)."""
    script = hook_install.script_path()
    before = script.read_text() if script.exists() else None
    hook_install.install(conf.path)
    conn = libvirt.open(conf.libvirt.uri)
    name = f"virtrbd-test-{tag}"
    try:
        dom = conn.defineXML(domain_xml(conf, name, f"rbd/{tag}-vm", domain_type=flab.status()["libvirt"]["domain_type"],
                                        clone_of=golden, ephemeral=True))
        dom.create()
        return wait_for_reads([dom], timeout=90)[name] > 0
    finally:
        remove_domain(conn, name)
        conn.close()
        if before is None:
            hook_install.uninstall()
        else:                                 # exactly what was installed before, whatever it was
            script.write_text(before)
            hook_install.notify_libvirtd()
