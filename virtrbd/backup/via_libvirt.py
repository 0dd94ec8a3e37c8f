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
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .stream import CHUNK, within, zeros

if TYPE_CHECKING:        # the libvirt side (and lxml) load only when a restore goes through libvirt
    from ..libvirt.policy import LibvirtTarget

log = logging.getLogger(__name__)

DEFAULT_OBJECT_SIZE = 4 << 20


def can_upload(target: LibvirtTarget) -> bool:
    """Whether the running libvirtd can upload into the pool's volumes (asked of it: ~1 ms, no data)."""
    from ..libvirt.streams import supports_volume_upload
    return supports_volume_upload(target.host, target.pool)


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
