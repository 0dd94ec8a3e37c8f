"""Instant restore without a cluster: the ACL that lets QEMU's user read a backup and is taken back, the markers
that keep retention off a file an import reads, and the job's decisions (commit only a backup that checks out,
take back what fails) with librbd's live-import calls faked."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from virtrbd.backup import in_use, instant, instant_copy, pruning, reader_access
from virtrbd.backup.instant_copy import file_objects
from virtrbd.backup.restore import plan_restore
from virtrbd.backup.retention import Policy
from virtrbd.errors import AlreadyExistsError, BackupError, BusyError, CorruptBackupError, UsageError
from virtrbd.spec import ImageSpec

from ...cli_helpers import assert_one_line_error, virtrbd
from ..fakes import FakeCluster
from .conftest import scattered

USER = "nobody"
MiB = 1 << 20


# --- the ACL ---------------------------------------------------------------------------------------------

@pytest.fixture
def private_file(reachable: Path) -> Path:
    """A 0600 file in a folder others may pass (0711) but not list, as a backup directory for instant restores."""
    folder = reachable / "backups"
    folder.mkdir()
    folder.chmod(0o711)
    path = folder / "backup.raw"
    path.write_bytes(b"data")
    path.chmod(0o600)
    return path


def modes(path: Path) -> tuple[int, list[str]]:
    return stat.S_IMODE(path.stat().st_mode), sorted(os.listxattr(path))


def test_the_user_may_read_the_file_while_granted_and_every_bit_is_as_before_after(private_file):
    before = modes(private_file)
    assert not reader_access.readable_as(USER, private_file)
    grants = reader_access.grant_read(private_file, USER)
    assert reader_access.readable_as(USER, private_file)
    assert [(g.path, g.perm) for g in grants] == [(str(private_file), 4)]
    assert stat.S_IMODE(private_file.stat().st_mode) & 0o007 == 0      # others gained nothing
    reader_access.revoke(grants)
    assert not reader_access.readable_as(USER, private_file)
    assert modes(private_file) == before


def test_a_folder_the_user_cannot_pass_is_named_and_nothing_is_opened(private_file):
    private_file.parent.chmod(0o700)
    before = modes(private_file), modes(private_file.parent)
    with pytest.raises(BackupError, match=f"no search permission on {private_file.parent}"):
        reader_access.grant_read(private_file, USER)
    assert (modes(private_file), modes(private_file.parent)) == before


def test_a_shared_entry_is_handed_to_each_restore_so_the_last_one_takes_it_back(private_file):
    first = reader_access.grant_read(private_file, USER)
    second = reader_access.grant_read(private_file, USER, shared=True)
    assert second == first
    assert reader_access.grant_read(private_file, USER, shared=False) == []     # someone else's entry: not ours


def test_entries_of_others_stay_when_ours_go(private_file):
    other = reader_access.user_ids("daemon")[0]
    reader_access._add(private_file, other, 4)
    grants = reader_access.grant_read(private_file, USER)
    reader_access.revoke(grants)
    entries = reader_access._read(private_file, private_file.stat())
    assert (reader_access._USER, 4, other) in entries
    assert all(ident != reader_access.user_ids(USER)[0] for _t, _p, ident in entries)


def test_a_mask_closed_by_chmod_is_opened_again(private_file):
    grants = reader_access.grant_read(private_file, USER)
    private_file.chmod(0o600)               # chmod sets the mask: the entry no longer counts
    assert not reader_access.readable_as(USER, private_file)
    assert reader_access.grant_read(private_file, USER) == grants
    assert reader_access.readable_as(USER, private_file)
    reader_access.revoke(grants)


def test_an_unknown_user_is_one_clear_error(private_file):
    with pytest.raises(BackupError, match="does not exist"):
        reader_access.grant_read(private_file, "no-such-user-here")


def test_a_file_the_user_cannot_open_even_with_an_acl_is_refused_and_nothing_stays(private_file, monkeypatch):
    before = modes(private_file)
    monkeypatch.setattr(reader_access, "readable_as", lambda user, path: False)
    with pytest.raises(BackupError, match="cannot open it even with an ACL"):
        reader_access.grant_read(private_file, USER)
    assert modes(private_file) == before


# --- the file's holes --------------------------------------------------------------------------------------

def test_file_objects_carry_only_the_data_and_holes_are_empty(tmp_path):
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as f:
        f.truncate(16 * MiB + 512)
        f.seek(5 * MiB)
        f.write(b"x" * 4096)                # object 1 (4-8 MiB)
        f.seek(12 * MiB - 1)
        f.write(b"y" * 4097)                # the last byte of object 2 (8-12 MiB), on into object 3
        f.seek(16 * MiB)
        f.write(b"z" * 512)                 # object 4, shorter than the others
    objects = list(file_objects(path, 4 * MiB))
    assert [n for n, _ in objects] == [0, 1, 2, 3, 4]
    assert objects[0][1] == []
    content = path.read_bytes()
    for number, pieces in objects:          # whatever the filesystem's granularity, the pieces are the file
        start = number * 4 * MiB
        for offset, data in pieces:
            assert data == content[start + offset:start + offset + len(data)]
        covered = b"".join(data for _, data in pieces)
        assert covered.strip(b"\0") == content[start:start + 4 * MiB].strip(b"\0")
    empty = tmp_path / "empty.raw"
    with open(empty, "wb") as f:
        f.truncate(8 * MiB)
    assert list(file_objects(empty, 4 * MiB)) == [(0, []), (1, [])]


def test_a_backup_file_that_cannot_be_read_is_one_virtrbd_error(tmp_path):
    """Not an OSError with a traceback: the copier records it and the import waits for --resume."""
    with pytest.raises(BackupError, match=r"gone.raw: cannot read the backup file \(no such file or directory\)"):
        list(file_objects(tmp_path / "gone.raw", 4 * MiB))


def test_a_filesystem_that_cannot_tell_holes_has_every_object_written_whole(tmp_path, monkeypatch):
    """Claiming an object empty that holds data would commit zeros in its place: no SEEK_DATA, all data."""
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(5 * MiB)
        f.write(b"x")
    real_lseek = os.lseek

    def no_seek_data(fd, offset, whence):
        if whence in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_lseek(fd, offset, whence)

    monkeypatch.setattr(os, "lseek", no_seek_data)
    content = path.read_bytes()
    assert list(file_objects(path, 4 * MiB)) == [(n, [(0, content[n * 4 * MiB:(n + 1) * 4 * MiB])])
                                                 for n in range(4)]


# --- markers, retention and rm -----------------------------------------------------------------------------

def test_a_marked_backup_is_kept_by_prune_and_refused_by_rm(tmp_path, make_full):
    content, extents = scattered(MiB, 1)
    made = {m.path.name: m for m in (make_full(content, extents, snapshot=s) for s in ("s1", "s2"))}
    doomed = pruning.prune(tmp_path, Policy(last=1), dry_run=True)
    old = made[next(d.file for d in doomed.decisions if not d.keep)]
    marker = in_use.marker_path(old.path, "rbd", "back")
    in_use.write_marker(marker, "rbd/back")
    assert in_use.importers(old.path) == ["rbd/back"]
    with pytest.raises(BusyError, match="rbd/back still reads it"):
        pruning.remove(old.path)
    result = pruning.prune(tmp_path, Policy(last=1))
    kept = {d.file: d for d in result.decisions}
    assert kept[old.path.name].keep and "instant restore into rbd/back" in kept[old.path.name].reason
    assert old.path.exists() and result.removed == []
    in_use.remove_marker(marker)
    assert pruning.prune(tmp_path, Policy(last=1)).removed == [old.path.name]


def test_one_copier_at_a_time_and_the_lock_tells_whether_one_runs(tmp_path):
    marker = tmp_path / "f.raw.instant.rbd~x"
    in_use.write_marker(marker, "rbd/x")
    assert not in_use.copy_running(marker)
    first = in_use.CopyLock(marker)
    first.acquire("rbd/x")
    assert in_use.copy_running(marker)
    with pytest.raises(BusyError, match="already running"):
        in_use.CopyLock(marker).acquire("rbd/x")
    first.release()
    assert not in_use.copy_running(marker)


def test_only_gone_processes_of_this_host_count_as_dead(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    here = socket.gethostname()
    entries = [{"client": "a", "pid": gone.pid, "host": here},
               {"client": "b", "pid": os.getpid(), "host": here},                 # this process
               {"client": "c", "pid": os.getppid(), "host": here},                # alive
               {"client": "d", "pid": gone.pid, "host": "elsewhere"},             # cannot tell: left alone
               {"client": "e", "host": here}]
    assert in_use.dead_clients(entries) == {"a"}
    marker = tmp_path / "f.raw.instant.rbd~x"
    in_use.write_marker(marker, "rbd/x", client=entries[0])
    in_use.add_client(marker, entries[2])
    with open(marker, "a") as f:
        f.write('{"client": "cut sh')                                           # a crash mid-line
    assert in_use.clients(marker) == entries[0:1] + entries[2:3]


# --- the job, librbd's calls faked ------------------------------------------------------------------------

TARGET = ImageSpec("rbd", "back")


def test_start_then_copy_commits_and_frees_the_file(reachable, make_full, live):
    content, extents = scattered(24 * MiB, 2, count=12)
    content = content[:8 * MiB] + bytes(4 * MiB) + content[12 * MiB:]             # one object a hole
    extents = [(o, min(n, 8 * MiB - o)) if o < 8 * MiB else (o, n) for o, n in extents
               if not 8 * MiB <= o < 12 * MiB]
    made = make_full(content, extents)
    cluster = FakeCluster()
    record = instant.start(cluster, plan_restore(made.path), TARGET, qemu_user=USER)
    assert in_use.importers(made.path) == ["rbd/back"]
    assert instant.status(cluster, TARGET).state == "stopped"
    assert record.file == str(made.path.resolve())
    result = instant_copy.copy(cluster, TARGET)
    assert bytes(cluster.pools["rbd"]["back"].data) == content
    assert [c[0] for c in live.calls] == ["prepare", "claim", "execute", "commit", "sparsify"]
    assert (result.written_objects, result.empty_objects) == live.calls[1][2:] and result.empty_objects >= 1
    assert result.checked == "ok" and in_use.importers(made.path) == []
    assert instant.RECORD_KEY not in cluster.pools["rbd"]["back"].metadata
    assert instant.status(cluster, TARGET).state == "none"


def test_a_backup_that_fails_its_checksum_is_never_committed(reachable, make_full, live):
    content, extents = scattered(4 * MiB, 3)
    made = make_full(content, extents)
    with open(made.path, "r+b") as f:           # bit rot at rest: size and structure unchanged
        offset, _length = extents[0]
        f.seek(offset)
        f.write(bytes([content[offset] ^ 1]))
    cluster = FakeCluster()
    instant.start(cluster, plan_restore(made.path), TARGET, qemu_user=USER)    # the file is read only later
    with pytest.raises(CorruptBackupError, match="checksum mismatch.*taken back"):
        instant_copy.copy(cluster, TARGET)
    assert ("commit", "back") not in live.calls and ("abort", "back") in live.calls
    assert "back" not in cluster.pools["rbd"] and in_use.importers(made.path) == []


def test_a_file_changed_during_the_copy_is_not_committed_and_a_used_image_waits_for_abort(reachable, make_full,
                                                                                          live):
    content, extents = scattered(4 * MiB, 4)
    made = make_full(content, extents)
    cluster = FakeCluster()
    instant.start(cluster, plan_restore(made.path), TARGET, qemu_user=USER)
    made.path.touch()
    live.busy = True                            # a guest runs on it
    with pytest.raises(CorruptBackupError, match="changed or replaced.*restore --abort rbd/back"):
        instant_copy.copy(cluster, TARGET)
    found = instant.status(cluster, TARGET)
    assert found.state == "failed" and "changed" in found.error
    assert ("commit", "back") not in live.calls and in_use.importers(made.path) == ["rbd/back"]
    live.busy = False
    instant.abort(cluster, TARGET)
    assert "back" not in cluster.pools["rbd"] and in_use.importers(made.path) == []


def test_bad_starts_leave_nothing(reachable, make_full, make_incremental, live):
    content, extents = scattered(MiB, 5)
    made = make_full(content, extents)
    cluster = FakeCluster()
    cluster.add("rbd", "back", b"old")
    with pytest.raises(AlreadyExistsError, match="already exists"):
        instant.start(cluster, plan_restore(made.path), TARGET, qemu_user=USER)
    newer = bytearray(content)
    newer[:10] = b"0123456789"
    diff = make_incremental(bytes(newer), [(0, 10, True)], "s1", "s2")
    with pytest.raises(UsageError, match="incremental backup cannot be restored instantly.*backups merge"):
        instant.check_plan(plan_restore(diff.path))
    assert live.calls == [] and in_use.importers(made.path) == []


def test_an_incremental_restores_instantly_from_the_synthetic_full_of_its_point(reachable, make_full,
                                                                                make_incremental, live):
    from virtrbd.backup.merge import synthesize
    content, extents = scattered(4 * MiB, 7)
    make_full(content, extents)
    newer = bytearray(content)
    newer[100:110] = b"0123456789"
    diff = make_incremental(bytes(newer), [(100, 10, True)], "s1", "s2")
    with pytest.raises(UsageError, match="backups merge"):
        instant.check_plan(plan_restore(diff.path))
    full = synthesize(diff.path, fmt="qcow2")
    assert instant.check_plan(plan_restore(diff.path)).data_path == full.path
    cluster = FakeCluster()
    record = instant.start(cluster, plan_restore(diff.path), TARGET, qemu_user=USER)
    assert record.file == str(full.path) and record.format == "qcow2"
    assert in_use.importers(full.path) == ["rbd/back"] and in_use.importers(diff.path) == []


def test_the_command_refuses_bad_combinations_in_one_line(tmp_path):
    for args, words in [(["restore", "--status", "rbd/x", "f.raw"], "only POOL/IMAGE"),
                        (["restore", "f.raw", "rbd/x", "--background"], "--background goes with --instant"),
                        (["restore", "--instant", "f.raw"], "name SRC"),
                        (["restore", "--instant", "f.raw", "rbd/x", "--force"], "do not go with"),
                        (["restore", "--status", "rbd/x", "--resume", "rbd/x"], "not allowed with"),
                        (["restore", "f.raw", "rbd/x", "--no-copy"], "--no-copy goes with --instant"),
                        (["restore", "--instant", "f.raw", "rbd/x", "--no-copy", "--background"], "choose one"),
                        (["restore", "--resume", "rbd/x", "--no-copy"], "--no-copy goes with --instant"),
                        (["restore", "--status", "rbd/x", "--background"], "goes with --instant or --resume")]:
        assert_one_line_error(virtrbd(*args), 2, words)


def test_an_incremental_is_refused_before_any_connection(tmp_path, make_full, make_incremental):
    content, extents = scattered(MiB, 6)
    make_full(content, extents)
    diff = make_incremental(content, [(0, 10, True)], "s1", "s2")
    conf = tmp_path / "virtrbd.conf"
    conf.write_text("[ceph]\nmonitors = 127.0.0.1:1\nkeyring = /nonexistent\n")
    result = virtrbd("--config", str(conf), "restore", "--instant", str(diff.path), "rbd/x")
    assert_one_line_error(result, 2, "incremental backup cannot be restored instantly")
