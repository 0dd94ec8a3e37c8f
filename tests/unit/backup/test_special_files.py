"""Anything may stand on secondary storage where a backup or its manifest should: a FIFO, a socket, a
directory, a device, a symlink to one of them. verify and restore answer in one line, exit 1, at once."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from virtrbd.backup.files import open_regular
from virtrbd.errors import CorruptBackupError

from ...cli_helpers import assert_one_line_error, virtrbd


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))          # left bound: the file stays a socket; the process' exit closes it


def make_directory(path: Path) -> None:
    path.mkdir()


def make_device(path: Path) -> None:
    path.symlink_to("/dev/zero")


SPECIAL = {"FIFO": make_fifo, "socket": make_socket, "directory": make_directory, "/dev/zero": make_device}
WORDS = {"FIFO": "a FIFO", "socket": "a socket", "directory": "a directory", "/dev/zero": "a character device"}


def put_special(path: Path, kind: str, via_symlink: bool) -> None:
    path.unlink()
    if via_symlink:
        SPECIAL[kind](path.with_name(path.name + ".thing"))
        path.symlink_to(path.name + ".thing")
    else:
        SPECIAL[kind](path)


@pytest.mark.parametrize("via_symlink", [False, True], ids=["in place", "symlink"])
@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("which", ["data", "manifest"])
@pytest.mark.parametrize("command", ["verify", "restore", "backups ls"])
def test_a_special_file_is_one_line_within_a_second(make_full, tmp_path, command, which, kind, via_symlink):
    backup = make_full(os.urandom(64 << 10), None, fmt="raw")
    put_special(backup.path if which == "data" else backup.manifest, kind, via_symlink)
    conf = tmp_path / "c.conf"
    conf.write_text("[ceph]\nmonitors = 192.0.2.1:3300\nclient_id = virt\nkeyring = /nonexistent\n")
    args = {"verify": ["verify", str(backup.manifest)], "restore": ["restore", str(backup.manifest), "rbd/x"],
            "backups ls": ["backups", "ls", str(backup.path.parent)]}[command]
    started = time.monotonic()
    result = virtrbd("--config", str(conf), *args, timeout=20)
    assert time.monotonic() - started < 3            # an interpreter's start included; the work itself is instant
    if command == "backups ls":                      # the listing names it; the last line says it is broken
        assert_one_line_error(result, 1, ": 1 of ", "entries are broken: rbd~img~s1.raw")
        assert WORDS[kind] in result.out
    else:
        assert_one_line_error(result, 1, WORDS[kind])


def test_a_symlink_to_a_regular_file_is_read(make_full):
    backup = make_full(os.urandom(64 << 10), None, fmt="qcow2")
    moved = backup.path.with_name("elsewhere.qcow2")
    backup.path.rename(moved)
    backup.path.symlink_to(moved.name)
    result = virtrbd("verify", str(backup.path))
    assert result.code == 0 and "checksum matches" in result.out, result


def test_the_type_is_judged_on_the_descriptor_and_a_missing_file_stays_missing(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    started = time.monotonic()
    with pytest.raises(CorruptBackupError, match="fifo: the backup file is a FIFO, not a regular file"):
        open_regular(tmp_path / "fifo")
    assert time.monotonic() - started < 0.5
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "none")
    (tmp_path / "file").write_bytes(b"x")
    fd = open_regular(tmp_path / "file")
    try:
        assert os.get_blocking(fd) and os.read(fd, 2) == b"x"
    finally:
        os.close(fd)
