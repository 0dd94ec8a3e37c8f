"""Publishing backup files: temp names, modes, no replacing, clean-up of what a killed backup left."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from virtrbd.backup.block_writer import BlockWriter
from virtrbd.backup.files import TEMP_MARK, AtomicFile, publish, remove_stale_temps, temp_name
from virtrbd.errors import BackupError


def test_temp_file_is_hidden_and_private_whatever_the_umask(tmp_path):
    final = tmp_path / "rbd~a~s.raw"
    old = os.umask(0)
    try:
        with AtomicFile(final) as out:
            assert out.temp.name.startswith(".rbd~a~s.raw" + TEMP_MARK)
            assert stat.S_IMODE(os.stat(out.temp).st_mode) == 0o600
            os.write(out.fd, b"data")
            out.commit()
    finally:
        os.umask(old)
    assert final.read_bytes() == b"data"
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_failure_inside_the_block_leaves_nothing(tmp_path):
    final = tmp_path / "x.raw"
    with pytest.raises(RuntimeError):
        with AtomicFile(final) as out:
            os.write(out.fd, b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_block_that_does_not_commit_publishes_nothing(tmp_path):
    with AtomicFile(tmp_path / "x.raw"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_publish_never_replaces_a_file(tmp_path):
    (tmp_path / "final").write_text("old")
    (tmp_path / "temp").write_text("new")
    with pytest.raises(BackupError, match="exists already"):
        publish(tmp_path / "temp", tmp_path / "final")
    assert (tmp_path / "final").read_text() == "old"


def test_stale_temps_of_dead_processes_on_this_host_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        host = temp_name(tmp_path / "a").name.split(TEMP_MARK)[1].rsplit("-", 1)[0]
        stale = tmp_path / f".a.raw{TEMP_MARK}{host}-{dead.pid}"
        running = tmp_path / f".b.raw{TEMP_MARK}{host}-{live.pid}"
        other_host = tmp_path / f".c.raw{TEMP_MARK}otherhost-{dead.pid}"
        mine = temp_name(tmp_path / "d.raw")
        for path in (stale, running, other_host, mine):
            path.write_text("x")
        assert remove_stale_temps(tmp_path) == [stale]
        assert running.exists() and other_host.exists() and mine.exists()
    finally:
        live.kill()
        live.wait()
    assert socket.gethostname()


def test_block_writer_coalesces_and_writes_everything(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    writer = BlockWriter(fd, direct=False, buffer_size=8192, buffers=2)
    writer.pwrite(0, b"a" * 5000)
    writer.pwrite(5000, b"b" * 5000)         # continues the first: one buffer, then a second
    writer.pwrite(20000, b"xyzw", 1, 3)
    writer.flush()
    writer.close()
    os.close(fd)
    data = path.read_bytes()
    assert data[:10000] == b"a" * 5000 + b"b" * 5000
    assert data[20000:20002] == b"yz"
    assert writer.bytes_written == 10002


def test_block_writer_reports_write_errors(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    writer = BlockWriter(fd, direct=False)
    writer.pwrite(0, b"x" * 10)
    with pytest.raises(BackupError, match="writing the backup file"):
        writer.flush()
    writer.close()
    os.close(fd)


def test_direct_writes_must_be_aligned(tmp_path):
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    writer = BlockWriter(fd, direct=True)
    with pytest.raises(ValueError, match="unaligned"):
        writer.pwrite(0, b"x" * 100)
    writer.close()
    os.close(fd)


def test_two_writer_threads_write_every_range_once(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    writer = BlockWriter(fd, direct=False, buffer_size=4096, buffers=3, threads=2)
    expected = bytearray(300 * 4096)
    for index in reversed(range(0, 300, 2)):          # scattered, descending: buffers never coalesce
        payload = bytes([index % 251 + 1]) * 4096
        expected[index * 4096:(index + 1) * 4096] = payload
        writer.pwrite(index * 4096, payload)
    writer.flush()
    writer.close()
    os.close(fd)
    assert path.read_bytes() == bytes(expected[:len(path.read_bytes())])
    assert writer.bytes_written == 150 * 4096


def test_direct_writer_sends_small_runs_through_the_page_cache_and_large_ones_direct(tmp_path):
    """Scattered 4 KiB runs share buffers and go through a buffered twin of the file; runs of SMALL_RUN or
    more go direct; every byte lands once, in its place, whatever the mix."""
    import random

    from virtrbd.backup.block_writer import SMALL_RUN
    folder = Path("/var/tmp") if os.path.isdir("/var/tmp") else tmp_path     # tmpfs refuses O_DIRECT
    path = folder / f"virtrbd-test-direct-{os.getpid()}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        pytest.skip("no filesystem here takes O_DIRECT")
    try:
        rng = random.Random(4)
        expected = bytearray(64 << 20)
        writer = BlockWriter(fd, direct=True, buffer_size=1 << 20, buffers=2, threads=2)
        offset = total = 0
        while offset < len(expected) - SMALL_RUN * 2:
            length = rng.choice([4096, 8192, SMALL_RUN, SMALL_RUN + 4096 * rng.randrange(1, 64)])
            payload = rng.randbytes(length)
            expected[offset:offset + length] = payload
            writer.pwrite(offset, payload)
            total += length
            offset += length + 4096 * rng.randrange(1, 50)
        writer.flush()
        writer.close()
        assert path.read_bytes() == bytes(expected[:path.stat().st_size])
        assert writer.bytes_written == total
    finally:
        os.close(fd)
        path.unlink()
