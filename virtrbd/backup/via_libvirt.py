"""Restoring through libvirt's volume upload, where the running libvirtd offers it.

libvirt 9.0's rbd backend cannot upload; with virtrbd's patches
(``patches/libvirt-9.0``) it can, and the restored data then reaches Ceph
through the hypervisor's daemon.  Whether it can is *detected* on the volume
being restored (``virtrbd.libvirt.streams.supports_volume_upload``), never configured:
where it cannot, the restore writes through librbd as always.  Only images of
the pool that libvirt's rbd pool stands for, with the default 4 MiB objects
(libvirt cannot choose another object size), take this path.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..libvirt.host import system_daemon_run
from .stream import CHUNK, within, zeros

if TYPE_CHECKING:        # the libvirt side (and lxml) load only when a restore goes through libvirt
    from ..libvirt.policy import LibvirtTarget

log = logging.getLogger(__name__)

DEFAULT_OBJECT_SIZE = 4 << 20
#: what each run of the local libvirtd answered when asked whether it can upload
MEMO = Path("/run/virtrbd/libvirt-upload.json")


def can_upload(target: LibvirtTarget) -> bool:
    """Whether the running libvirtd can upload into the pool's volumes (asked of it: ~1 ms, no data)."""
    from ..libvirt.streams import supports_volume_upload
    answer = supports_volume_upload(target.host, target.pool)
    _remember(target.host.uri, answer)
    return answer


def known_unable(uri: str) -> bool:
    """Whether this run of the local libvirtd was asked already and cannot upload (Debian's rbd backend):
    then a restore need not load libvirt's binding and connect only to hear it again, ~16 MiB of its
    peak memory and 60 ms (docs/performance.md)."""
    run = system_daemon_run(uri)
    return run is not None and _memo().get(uri) == {"daemon": run, "upload": False}


def _memo() -> dict:
    try:
        found = json.loads(MEMO.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _remember(uri: str, answer: bool) -> None:
    """Kept by root only, in a 0700 folder of /run (emptied at boot).  The most a wrong entry could do is
    send a restore through librbd, the path that always works."""
    run = system_daemon_run(uri)
    if run is None or os.geteuid() != 0:
        return
    memo = {**_memo(), uri: {"daemon": run, "upload": answer}}
    try:
        MEMO.parent.mkdir(mode=0o700, exist_ok=True)
        temp = MEMO.with_name(f".{MEMO.name}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(memo, out)
        os.replace(temp, MEMO)
    except OSError as exc:
        log.debug("cannot remember libvirt's answer in %s: %s", MEMO, exc)


def create_volume(target: LibvirtTarget, name: str, size: int) -> None:
    """Make the image through libvirt, so that libvirt knows it without a pool refresh."""
    from ..xml.volume import VolumeDef
    target.host.create_volume(target.pool, VolumeDef(name, size))


class LibvirtSink:
    """The image being restored as a ``stream.Sink`` whose data goes through libvirt's volume upload.

    Every run of data is one upload at its offset; the patched backend returns
    only once the data is written and flushed, so there is nothing in flight
    to wait for.  A resize (an incremental that changes the size) goes through
    ``resize``, a librbd call: libvirt cannot shrink an rbd volume.
    """

    def __init__(self, target: LibvirtTarget, name: str, size: int, resize: Callable[[int], None]):
        self.target = target
        self.name = name
        self.size = size
        self._resize = resize
        self.written_bytes = 0

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        from ..libvirt.streams import upload_volume
        end = within(self.size, offset, start, len(data) if end is None else end)
        length = end - start
        if length <= 0:
            return
        source = io.BytesIO(memoryview(data)[start:end])
        upload_volume(self.target.host, self.target.pool, self.name, source, offset, length)
        self.written_bytes += length

    def zero(self, offset: int, length: int) -> None:
        length = min(length, self.size - offset)
        while length > 0:
            piece = min(length, CHUNK)
            self.write(offset, zeros(piece))
            self.written_bytes -= piece           # zeros are not data written
            offset, length = offset + piece, length - piece

    def resize(self, size: int) -> None:
        self._resize(size)
        self.size = size

    def drain(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, timeout: float = 0) -> None:
        pass
