"""Backup, verify and restore end to end on in-memory images: formats, chains, failures, interruptions."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from virtrbd.backup.formats import manifest as manifests
from virtrbd.backup.formats.checksum import ContentDigest
from virtrbd.backup.make import write_full_backup
from virtrbd.backup.memory import MemorySink, MemorySource
from virtrbd.backup.restore import plan_restore, restore_chain
from virtrbd.backup.results import BackupPlan, SourceFacts
from virtrbd.backup.stream import BLOCK, CHUNK, Cancelled, cancellable
from virtrbd.backup.verify import run_verify
from virtrbd.errors import BackupError, CorruptBackupError
from virtrbd.spec import ImageSpec

from .conftest import apply_changes, as_before_xxh3, data_offset, flip_byte, scattered

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
    with pytest.raises(CorruptBackupError, match="checksum mismatch: the content hashes to"):
        restored(result.path)


def test_a_backup_from_the_sha256_days_restores_checked_by_its_data_crc(make_full):
    content, extents = scattered(4 * CHUNK, seed=8)
    result = make_full(content, extents, fmt="raw")
    as_before_xxh3(result.manifest, content)
    assert restored(result.path) == content
    assert run_verify(manifests.resolve(result.path)).checksum == manifests.resolve(result.path).checksum["value"]
    flip_byte(result.path, data_offset(result.path) + 3)
    with pytest.raises(CorruptBackupError, match="checksum mismatch"):
        run_verify(manifests.resolve(result.path))
    with pytest.raises(CorruptBackupError, match="checksum mismatch: its data has CRC-32C"):
        restored(result.path)


def test_restore_falls_back_to_sha256_for_a_manifest_without_crc(make_full):
    content, extents = scattered(4 * CHUNK, seed=9)
    result = make_full(content, extents, fmt="raw")
    as_before_xxh3(result.manifest, content, data_crc=False)
    data = json.loads(result.manifest.read_text())
    del data["seal"], data["file_checksum"]                    # as version 1 wrote it at first
    data["manifest_version"] = 1
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
        write_full_backup(source, SourceFacts(source.size, "id", 1), plan)
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


def test_an_incremental_from_the_sha256_days_verifies_and_restores(make_full, make_incremental):
    import hashlib
    v1 = os.urandom(CHUNK)
    make_full(v1, None, snapshot="s1")
    v2, ch = apply_changes(v1, CHUNK, [(4096, os.urandom(5000))], [])
    inc = make_incremental(v2, ch, "s1", "s2")
    data = json.loads(inc.manifest.read_text())
    data["checksum"] = {"algorithm": "sha256", "value": hashlib.sha256(inc.path.read_bytes()).hexdigest()}
    data["seal"] = manifests.seal_of(data)
    inc.manifest.write_text(manifests.dumps(data))
    assert run_verify(manifests.resolve(inc.path)).checksum == data["checksum"]["value"]
    assert restored(inc.path) == v2
    flip_byte(inc.path, inc.file_size - 100)
    with pytest.raises(CorruptBackupError, match="checksum mismatch"):
        run_verify(manifests.resolve(inc.path))


def test_an_encrypted_chain_restores_and_verifies_with_its_identity_only(make_full, make_incremental, tmp_path):
    from virtrbd.backup.sealing.keys import Identity
    from virtrbd.errors import UsageError
    ours, other = Identity.generate(), Identity.generate()
    sealed_to = (ours.recipient, other.recipient)
    size = 3 * CHUNK
    v1, extents = scattered(size, seed=9)
    full = make_full(v1, extents, fmt="qcow2", snapshot="s1", recipients=sealed_to)
    v2, ch = apply_changes(v1, size, [(100, os.urandom(5000)), (2 * CHUNK, b"q" * 7)], [(CHUNK, 70000)])
    inc = make_incremental(v2, ch, "s1", "s2", recipients=sealed_to)
    assert full.path.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert inc.path.read_bytes().startswith(b"age-encryption.org/v1\n")
    for identities in ([ours], [other]):
        plan = plan_restore(inc.path, identities)
        sink = MemorySink(plan.links[0].size)
        restore_chain(plan, sink)
        assert bytes(sink.data) == v2
        m = manifests.resolve(full.path)
        m.identities = identities
        assert run_verify(m).judged == "file and content"
    with pytest.raises(UsageError, match="encrypted .* give the identity"):
        plan_restore(inc.path)
    with pytest.raises(UsageError, match="none of the given identities opens it"):
        plan_restore(inc.path, [Identity.generate()])
    assert "needs --identity" in run_verify(manifests.resolve(full.path)).judged     # digests only
    flip_byte(full.path, 70000)
    with pytest.raises(CorruptBackupError, match="changed"):
        run_verify(manifests.resolve(full.path))


def test_an_encrypted_full_backup_is_never_raw(make_full):
    from virtrbd.backup.sealing.keys import Identity
    from virtrbd.errors import UsageError
    with pytest.raises(UsageError, match="an encrypted full backup is QCOW2"):
        make_full(os.urandom(CHUNK), None, fmt="raw", recipients=(Identity.generate().recipient,))
