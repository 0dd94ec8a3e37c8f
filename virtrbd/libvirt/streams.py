"""Volume data through libvirt: upload and download of an rbd volume over a virStream.

libvirt 9.0's rbd storage backend cannot do this; virtrbd's patches
(``patches/libvirt-9.0``, loaded by ``virtrbd lab up --libvirt-patched`` or a
libvirtd started with that module) add it.  Going through libvirt keeps Ceph
behind the hypervisor's daemon: the caller needs no key, no monitor address,
only a libvirt connection.  Where the running libvirtd lacks the callbacks,
callers fall back to librbd; which one runs is *detected* by asking the
daemon (``supports_volume_upload`` / ``supports_volume_download``), never
configured or guessed from a version string.

The probe costs one call and moves no data: it asks for a *sparse* stream,
which libvirt's storage driver refuses with ``VIR_ERR_NO_SUPPORT`` when the
backend has no upload (download) callback at all, and which the patched rbd
backend refuses with ``VIR_ERR_ARGUMENT_UNSUPPORTED`` before it touches the
image.  A backend that accepts it gets its stream aborted at once.

Errors leave as ``virtrbd.errors`` classes; a librbd error that the patched
backend reports (``failed to write … of RBD image 'rbd/x': Read-only file
system``) keeps its errno, so it maps to the same class a librbd call would.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .. import errors
from ..xml.volume import VolumeDef
from .host import Host

log = logging.getLogger(__name__)

#: bytes read from the source (or asked of the stream) at a time
STREAM_PIECE = 1024 * 1024
#: a scratch volume for the probe, when the pool has none libvirt knows of
PROBE_PREFIX = "virtrbd-probe-"


def supports_volume_upload(host: Host, pool: str, volume: str | None = None) -> bool:
    """Whether the running libvirtd can upload into volumes of ``pool`` (one cheap call, no data)."""
    return _probe(host, pool, volume, upload=True)


def supports_volume_download(host: Host, pool: str, volume: str | None = None) -> bool:
    """Whether the running libvirtd can download volumes of ``pool`` (one cheap call, no data)."""
    return _probe(host, pool, volume, upload=False)


def upload_volume(host: Host, pool: str, name: str, source: BinaryIO, offset: int = 0,
                  length: int | None = None) -> int:
    """Write ``source``'s bytes into volume ``name`` at ``offset``; return how many were written.

    With ``length``, exactly that many bytes are read from ``source`` (a source
    that ends earlier is an error); without it, all of ``source`` up to its end.
    The call returns once libvirt reports the data written (the patched rbd
    backend flushes the image before it finishes the stream).
    """
    _check_range(offset, length)
    vol = _volume(host, pool, name)
    what = f"uploading to volume {name} of storage pool {pool}"
    sent = 0
    with _streaming(host, what) as stream:
        vol.upload(stream, offset, length or 0, 0)
        while length is None or sent < length:
            want = STREAM_PIECE if length is None else min(STREAM_PIECE, length - sent)
            data = source.read(want)
            if not data:
                break
            pos = 0
            while pos < len(data):             # a blocking stream takes it all at once
                done = stream.send(data[pos:] if pos else data)
                if done < 0:
                    raise errors.LibvirtError(f"{what}: the stream returned {done}")
                pos += done
            sent += len(data)
        if length is not None and sent < length:
            raise errors.UsageError(f"{what}: the source ended after {sent} of the {length} bytes to upload")
    log.info("uploaded %d bytes to volume %s of storage pool %s at offset %d", sent, name, pool, offset)
    return sent


def download_volume(host: Host, pool: str, name: str, sink: BinaryIO, offset: int = 0,
                    length: int | None = None) -> int:
    """Write volume ``name``'s bytes from ``offset`` into ``sink``; return how many were written.

    ``length`` limits the download; like reading a file it stops at the end of
    the volume (compare the count with what you asked for if that matters).
    """
    _check_range(offset, length)
    vol = _volume(host, pool, name)
    what = f"downloading volume {name} of storage pool {pool}"
    received = 0
    with _streaming(host, what) as stream:
        vol.download(stream, offset, length or 0, 0)
        while True:
            data = stream.recv(STREAM_PIECE)
            if isinstance(data, int):      # -2 only on non-blocking streams; ours blocks
                raise errors.LibvirtError(f"{what}: the stream returned {data}")
            if not data:
                break
            sink.write(data)
            received += len(data)
    log.info("downloaded %d bytes of volume %s of storage pool %s from offset %d", received, name, pool, offset)
    return received


# --- helpers ---------------------------------------------------------------------------------

@contextmanager
def _streaming(host: Host, what: str) -> Iterator:
    """A new stream, finished when the block ends; aborted (and libvirt's error translated) when it fails."""
    lv = host.libvirt
    stream = _new_stream(host, what)
    try:
        yield stream
        stream.finish()
    except lv.libvirtError as exc:
        _abort(stream)
        raise _translate(lv, exc, what) from None
    except BaseException:
        _abort(stream)
        raise


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0:
        raise errors.UsageError(f"offset {offset}: must not be negative")
    if length is not None and length <= 0:
        raise errors.UsageError(f"length {length}: must be positive (or None for up to the end)")


def _volume(host: Host, pool: str, name: str):
    """libvirt's handle on the volume; a pool refresh only for a volume libvirt has not seen yet."""
    vol = host.find_volume(pool, name)
    if vol is None:
        host.refresh_pool(pool)
        vol = host.find_volume(pool, name)
    if vol is None:
        raise errors.NotFoundError(f"volume {name} of storage pool {pool}: does not exist")
    return vol


def _new_stream(host: Host, what: str):
    lv = host.libvirt
    try:
        return host.conn.newStream(0)
    except lv.libvirtError as exc:
        raise _translate(lv, exc, what) from None


def _abort(stream) -> None:
    try:
        stream.abort()
    except Exception as exc:      # the stream's own error is already on its way to the caller
        log.debug("aborting the stream: %s", exc)


def _translate(lv, exc, what: str) -> errors.VirtrbdError:
    """One virtrbd error for a libvirt error met while streaming."""
    message = " ".join((exc.get_error_message() or str(exc)).split())
    code = exc.get_error_code()
    if code == lv.VIR_ERR_NO_SUPPORT:
        return errors.LibvirtError(f"{what}: {message} (the running libvirtd's storage backend cannot stream "
                                   f"volume data; libvirt 9.0's rbd backend needs virtrbd's patches)")
    if code in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_ARGUMENT_UNSUPPORTED):
        return errors.UsageError(f"{what}: {message}")
    if code == lv.VIR_ERR_NO_STORAGE_VOL:
        return errors.NotFoundError(f"{what}: {message}")
    if code == lv.VIR_ERR_SYSTEM_ERROR:
        err: tuple = exc.err or ()
        errno = err[7] if len(err) > 7 else 0      # int1: the errno of a system error
        cls = errors.ERRNO_CLASSES.get(errno)
        if cls is not None:
            return cls(f"{what}: {message}", errno=errno)
    return errors.LibvirtError(f"{what}: {message}")


def _probe(host: Host, pool: str, volume: str | None, *, upload: bool) -> bool:
    lv = host.libvirt
    name = volume or _any_volume(host, pool)
    scratch = None
    if name is None:
        scratch = _make_scratch(host, pool)
        name = scratch.name()
    try:
        vol = _volume(host, pool, name)
        result = _ask(host, vol, upload)
        if result is None and scratch is None:
            # the volume was busy (being built or uploaded to): ask on one nobody uses
            scratch = _make_scratch(host, pool)
            result = _ask(host, scratch, upload)
        if result is None:
            raise errors.LibvirtError(f"storage pool {pool}: cannot tell whether volume "
                                      f"{'upload' if upload else 'download'} works (probe volume busy)")
        log.debug("storage pool %s: volume %s %s", pool, "upload" if upload else "download",
                  "supported" if result else "not supported")
        return result
    finally:
        if scratch is not None:
            try:
                scratch.delete(0)
            except lv.libvirtError as exc:
                log.warning("removing the probe volume %s: %s", scratch.name(), exc.get_error_message())


def _ask(host: Host, vol, upload: bool) -> bool | None:
    """True/False as the daemon answers a sparse-stream request; None when the volume is busy."""
    lv = host.libvirt
    stream = _new_stream(host, "probing volume streams")
    try:
        if upload:
            vol.upload(stream, 0, 0, lv.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        else:
            vol.download(stream, 0, 0, lv.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    except lv.libvirtError as exc:
        code = exc.get_error_code()
        if code == lv.VIR_ERR_NO_SUPPORT:
            return False
        if code == lv.VIR_ERR_OPERATION_INVALID:       # "still in use" / "still being allocated"
            return None
        if code in (lv.VIR_ERR_ARGUMENT_UNSUPPORTED, lv.VIR_ERR_INVALID_ARG):
            return True                                  # the backend has the callback: it refused sparse
        raise _translate(lv, exc, "probing volume streams") from None
    _abort(stream)                                       # a backend that streams sparse data: nothing sent
    return True


def _any_volume(host: Host, pool: str) -> str | None:
    """A volume libvirt already knows in the pool, without refreshing it."""
    lv = host.libvirt
    target = host.find_pool(pool)
    if target is None:
        raise errors.NotFoundError(f"storage pool {pool}: not defined in libvirt")
    try:
        names = target.listVolumes()
    except lv.libvirtError as exc:
        raise _translate(lv, exc, f"listing the volumes of storage pool {pool}") from None
    return names[0] if names else None


def _make_scratch(host: Host, pool: str):
    return host.create_volume(pool, VolumeDef(f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}", 1024 * 1024))
