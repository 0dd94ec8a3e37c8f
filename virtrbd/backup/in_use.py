"""Which backup files an instant restore still reads: a marker beside each, until the import is committed.

Retention and ``backups rm`` work on the directory alone, without the cluster,
so what an uncommitted import needs is written where they look: a small file
``<backup>.instant.<pool>~<image>`` naming the image.  Its lock (``flock``) is
held by the process that copies, which is how ``restore --status`` tells a copy
that runs from one that was killed.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from ..errors import BusyError
from .files import INSTANT_MARK, fsync_directory

SEPARATOR = INSTANT_MARK


def marker_path(data_path: Path, pool: str, image: str) -> Path:
    return data_path.with_name(f"{data_path.name}{SEPARATOR}{pool}~{image}")


def importers(data_path: Path) -> list[str]:
    """The images (POOL/IMAGE) whose uncommitted instant restore reads ``data_path``."""
    prefix = data_path.name + SEPARATOR
    try:
        names = os.listdir(data_path.parent)
    except FileNotFoundError:
        return []
    return sorted(n[len(prefix):].replace("~", "/", 1) for n in names if n.startswith(prefix))


def refuse_if_needed(data_path: Path) -> None:
    """``BusyError`` naming the images when an uncommitted instant restore still reads ``data_path``."""
    images = importers(data_path)
    if images:
        raise BusyError(f"{data_path}: an instant restore into {', '.join(images)} still reads it (not "
                        f"committed); see virtrbd restore --status {images[0]}")


def write_marker(path: Path, image: str, client: dict | None = None) -> None:
    """The marker, durable before the import exists (a crash leaves a marker, never an unmarked import).

    One JSON object per line: the image, then every process that worked on the
    import (its Ceph client address, pid and host: ``this_process``), each
    written before that process can take the image's lock or watch it.  A
    copier that holds the marker's lock may then tell the dead ones' leftovers
    (a lock, a watch that every notification would wait for) from live clients.
    """
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(json.dumps({"image": image}) + "\n")
        if client:
            f.write(json.dumps(client) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_directory(path.parent)


def this_process(address: str) -> dict:
    return {"client": address, "pid": os.getpid(), "host": socket.gethostname()}


def add_client(path: Path, client: dict) -> None:
    """Note one more process (a line appended and synced: never a half-rewritten file)."""
    with open(path, "a") as f:
        f.write(json.dumps(client) + "\n")
        f.flush()
        os.fsync(f.fileno())


def clients(path: Path) -> list[dict]:
    """The processes the marker names (a line cut short by a crash is skipped)."""
    found = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and "client" in entry:
                    found.append(entry)
    except FileNotFoundError:
        pass
    return found


def dead_clients(entries: list[dict]) -> set[str]:
    """The addresses of processes of this host that are gone (never this process, never another host's)."""
    host, me = socket.gethostname(), os.getpid()
    dead = set()
    for entry in entries:
        pid = entry.get("pid")
        if entry.get("host") != host or not isinstance(pid, int) or pid == me:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(str(entry["client"]))
        except PermissionError:
            pass                                # alive, someone else's
    return dead


def remove_marker(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_directory(path.parent)


class CopyLock:
    """The copier's exclusive ``flock`` on the marker: one copy at a time, released by the kernel at death."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, image: str) -> None:
        if not self.path.exists():             # removed by hand: the import still reads the file
            try:
                write_marker(self.path, image)
            except FileExistsError:
                pass
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise BusyError(f"{image}: its copy is already running (see virtrbd restore --status {image})") from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def copy_running(path: Path) -> bool:
    """Whether a process holds the marker's lock, i.e. a copy runs now."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
