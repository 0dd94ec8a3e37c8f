"""Restoring through libvirt's volume upload, where the running libvirtd offers it.

libvirt 9.0's rbd backend cannot upload; with virtrbd's patches
(``patches/libvirt-9.0``) it can, and the restored data then reaches Ceph
through the hypervisor's daemon.  Whether it can is *detected* on the volume
being restored (``libvirt_stream.supports_volume_upload``), never configured:
where it cannot, the restore writes through librbd as always.  Only images of
the pool that libvirt's rbd pool stands for, with the default 4 MiB objects
(libvirt cannot choose another object size), take this path.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import VirtrbdError

if TYPE_CHECKING:
    from ..libvirt_host import Host
from .stream import CHUNK, within, zeros

log = logging.getLogger(__name__)

DEFAULT_OBJECT_SIZE = 4 << 20


@dataclass
class LibvirtTarget:
    """Where a restore may upload: an open libvirt connection and the rbd pool's libvirt name."""

    host: Host
    pool: str             # the libvirt pool
    ceph_pool: str        # the Ceph pool it stands for


@contextmanager
def libvirt_target(config) -> Iterator[LibvirtTarget | None]:
    """The libvirt side of ``config`` when libvirtd answers and runs an rbd pool on [ceph] pool; None otherwise."""
    if not config.libvirt.uri:
        yield None
        return
    try:
        from ..libvirt_host import Host
        host = Host(config.libvirt.uri)
    except VirtrbdError as exc:
        log.info("restore through librbd: libvirt is not reachable (%s)", exc)
        yield None
        return
    try:
        pool = host.find_pool(config.libvirt_pool)
        if pool is None or not pool.isActive():
            yield None
        elif not _holds_our_pool(host, pool, config):
            log.info("restore through librbd: libvirt's pool %s is not Ceph pool %s of monitors %s",
                     config.libvirt_pool, config.ceph.pool, ", ".join(map(str, config.ceph.monitors)))
            yield None
        else:
            yield LibvirtTarget(host, config.libvirt_pool, config.ceph.pool)
    finally:
        host.close()


def _holds_our_pool(host, pool, config) -> bool:
    """Whether libvirt's pool is ``config``'s Ceph pool on ``config``'s cluster (a monitor in common).

    A libvirt pool of the same name may stand for another pool, or for a pool
    of the same name in another cluster: an upload there would put the
    restored image where the user did not ask for it.
    """
    from ..libvirt_host import translated
    from ..xml.pool import PoolDef
    try:
        with translated(host.libvirt, f"reading storage pool {config.libvirt_pool}"):
            found = PoolDef.from_xml(pool.XMLDesc(0))
    except VirtrbdError as exc:
        log.info("restore through librbd: %s", exc)
        return False
    ours = {address for monitor in config.ceph.monitors for address in _addresses(monitor)}
    return found.source_name == config.ceph.pool and any(
        address in ours for monitor in found.monitors for address in _addresses(monitor))


def _addresses(monitor) -> set[tuple[str, int]]:
    """(host, port) pairs a monitor written this way answers on (``Monitor.ports``), the host normalised."""
    import ipaddress
    try:
        host = str(ipaddress.ip_address(monitor.host))
    except ValueError:
        host = monitor.host.rstrip(".").casefold()
    return {(host, port) for port in monitor.ports}


def can_upload(target: LibvirtTarget) -> bool:
    """Whether the running libvirtd can upload into the pool's volumes (asked of it: ~1 ms, no data)."""
    from ..libvirt_stream import supports_volume_upload
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
        from ..libvirt_stream import upload_volume
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
