"""Volume upload/download through libvirt streams, against a libvirt module built from the real binding."""

import errno
import io

import libvirt
import pytest

from virtrbd import errors
from virtrbd.libvirt import streams
from virtrbd.libvirt.host import Host

from .fakes import libvirt_error


@pytest.fixture
def host(lv):
    with Host(libvirt_module=lv) as host:
        yield host


# --- detection -------------------------------------------------------------------------------------

def test_a_backend_without_upload_is_detected_from_the_error_code(lv, host):
    lv.vol.upload.side_effect = libvirt_error(libvirt.VIR_ERR_NO_SUPPORT, "storage pool doesn't support volume upload")
    assert streams.supports_volume_upload(host, "ceph") is False


def test_the_probe_asks_for_a_sparse_stream_which_moves_no_data(lv, host):
    lv.vol.download.side_effect = libvirt_error(libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, "sparse streams are not …")
    assert streams.supports_volume_download(host, "ceph") is True
    lv.vol.download.assert_called_once_with(lv.stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    lv.stream.recv.assert_not_called()
    lv.pool.refresh.assert_not_called()


def test_a_backend_that_streams_sparse_data_has_its_probe_stream_aborted(lv, host):
    assert streams.supports_volume_upload(host, "ceph") is True
    lv.vol.upload.assert_called_once_with(lv.stream, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
    lv.stream.abort.assert_called_once_with()
    lv.stream.send.assert_not_called()


def test_the_probe_uses_a_scratch_volume_when_libvirt_knows_none(lv, host, mocker):
    lv.pool.listVolumes.return_value = []
    scratch = mocker.create_autospec(libvirt.virStorageVol, instance=True)
    scratch.name.return_value = "virtrbd-probe-0123456789ab"
    lv.pool.createXML.return_value = scratch
    lv.pool.storageVolLookupByName.return_value = scratch
    scratch.upload.side_effect = libvirt_error(libvirt.VIR_ERR_NO_SUPPORT)
    assert streams.supports_volume_upload(host, "ceph") is False
    assert "<name>virtrbd-probe-" in lv.pool.createXML.call_args.args[0]
    scratch.delete.assert_called_once_with(0)


def test_the_probe_moves_to_a_scratch_volume_when_the_volume_is_busy(lv, host, mocker):
    lv.vol.upload.side_effect = libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "volume 'disk1' is still in use.")
    scratch = mocker.create_autospec(libvirt.virStorageVol, instance=True)
    lv.pool.createXML.return_value = scratch
    scratch.upload.side_effect = libvirt_error(libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED)
    assert streams.supports_volume_upload(host, "ceph") is True
    scratch.delete.assert_called_once_with(0)


def test_the_probe_of_an_undefined_pool_says_so(lv, host):
    lv.conn.storagePoolLookupByName.side_effect = libvirt_error(libvirt.VIR_ERR_NO_STORAGE_POOL)
    with pytest.raises(errors.NotFoundError, match="storage pool ceph: not defined"):
        streams.supports_volume_download(host, "ceph")


# --- upload ----------------------------------------------------------------------------------------

def test_upload_sends_the_source_in_chunks_then_finishes(lv, host, monkeypatch):
    monkeypatch.setattr(streams, "STREAM_PIECE", 4)
    lv.stream.send.side_effect = lambda data: len(data)
    sent = streams.upload_volume(host, "ceph", "disk1", io.BytesIO(b"0123456789"), offset=512)
    assert sent == 10
    lv.vol.upload.assert_called_once_with(lv.stream, 512, 0, 0)
    assert [c.args[0] for c in lv.stream.send.call_args_list] == [b"0123", b"4567", b"89"]
    lv.stream.finish.assert_called_once_with()
    lv.stream.abort.assert_not_called()


def test_upload_with_a_length_reads_no_more_than_that(lv, host):
    lv.stream.send.side_effect = lambda data: len(data)
    source = io.BytesIO(b"0123456789")
    assert streams.upload_volume(host, "ceph", "disk1", source, length=3) == 3
    lv.vol.upload.assert_called_once_with(lv.stream, 0, 3, 0)
    assert source.tell() == 3


def test_upload_resends_what_the_stream_did_not_take(lv, host):
    lv.stream.send.side_effect = [2, 3]
    assert streams.upload_volume(host, "ceph", "disk1", io.BytesIO(b"abcde")) == 5
    assert [c.args[0] for c in lv.stream.send.call_args_list] == [b"abcde", b"cde"]


def test_a_source_shorter_than_the_length_aborts_the_upload(lv, host):
    lv.stream.send.side_effect = lambda data: len(data)
    with pytest.raises(errors.UsageError, match="the source ended after 4 of the 10 bytes to upload"):
        streams.upload_volume(host, "ceph", "disk1", io.BytesIO(b"abcd"), length=10)
    lv.stream.abort.assert_called_once_with()
    lv.stream.finish.assert_not_called()


def test_a_librbd_error_reported_by_libvirt_keeps_its_errno(lv, host):
    lv.stream.send.side_effect = libvirt_error(
        libvirt.VIR_ERR_SYSTEM_ERROR, "failed to write 4194304 bytes at offset 0 of RBD image 'rbd/disk1': "
        "Operation not permitted", int1=errno.EPERM)
    with pytest.raises(errors.PermissionDeniedError) as raised:
        streams.upload_volume(host, "ceph", "disk1", io.BytesIO(b"x"))
    assert raised.value.errno == errno.EPERM
    assert str(raised.value) == ("uploading to volume disk1 of storage pool ceph: failed to write 4194304 bytes "
                                 "at offset 0 of RBD image 'rbd/disk1': Operation not permitted")
    lv.stream.abort.assert_called_once_with()


def test_an_error_at_finish_fails_the_upload(lv, host):
    lv.stream.send.side_effect = lambda data: len(data)
    lv.stream.finish.side_effect = libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, "failed to flush RBD image 'rbd/x': "
                                                 "Connection timed out", int1=errno.ETIMEDOUT)
    with pytest.raises(errors.OperationTimeoutError, match="failed to flush"):
        streams.upload_volume(host, "ceph", "disk1", io.BytesIO(b"x"))


def test_upload_where_libvirt_cannot_says_what_is_missing(lv, host):
    lv.vol.upload.side_effect = libvirt_error(libvirt.VIR_ERR_NO_SUPPORT, "storage pool doesn't support volume upload")
    with pytest.raises(errors.LibvirtError, match="doesn't support volume upload .*needs virtrbd's patches"):
        streams.upload_volume(host, "ceph", "disk1", io.BytesIO(b"x"))
    lv.stream.send.assert_not_called()


def test_a_range_the_backend_refuses_is_a_usage_error(lv, host):
    lv.vol.upload.side_effect = libvirt_error(libvirt.VIR_ERR_INVALID_ARG, "cannot upload 10 bytes at offset 5")
    with pytest.raises(errors.UsageError, match="cannot upload 10 bytes at offset 5"):
        streams.upload_volume(host, "ceph", "disk1", io.BytesIO(b"x"), offset=5, length=10)


@pytest.mark.parametrize("offset, length", [(-1, None), (0, 0), (0, -5)])
def test_bad_ranges_are_refused_before_libvirt(lv, host, offset, length):
    with pytest.raises(errors.UsageError):
        streams.upload_volume(host, "ceph", "disk1", io.BytesIO(b"x"), offset=offset, length=length)
    with pytest.raises(errors.UsageError):
        streams.download_volume(host, "ceph", "disk1", io.BytesIO(), offset=offset, length=length)
    lv.conn.newStream.assert_not_called()


def test_a_volume_libvirt_has_not_seen_costs_one_refresh(lv, host):
    lv.pool.storageVolLookupByName.side_effect = libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL)
    with pytest.raises(errors.NotFoundError, match="volume disk9 of storage pool ceph: does not exist"):
        streams.upload_volume(host, "ceph", "disk9", io.BytesIO(b"x"))
    lv.pool.refresh.assert_called_once_with(0)
    assert lv.pool.storageVolLookupByName.call_count == 2


# --- download ---------------------------------------------------------------------------------------

def test_download_writes_every_chunk_to_the_sink(lv, host):
    lv.stream.recv.side_effect = [b"abc", b"de", b""]
    sink = io.BytesIO()
    assert streams.download_volume(host, "ceph", "disk1", sink, offset=7, length=5) == 5
    assert sink.getvalue() == b"abcde"
    lv.vol.download.assert_called_once_with(lv.stream, 7, 5, 0)
    lv.stream.finish.assert_called_once_with()


def test_a_download_error_aborts_and_names_the_volume(lv, host):
    lv.stream.recv.side_effect = [b"abc", libvirt_error(
        libvirt.VIR_ERR_SYSTEM_ERROR, "failed to read 4194304 bytes at offset 0 of RBD image 'rbd/disk1': "
        "Input/output error", int1=errno.EIO)]
    with pytest.raises(errors.LibvirtError, match="downloading volume disk1 of storage pool ceph: failed to read"):
        streams.download_volume(host, "ceph", "disk1", io.BytesIO())
    lv.stream.abort.assert_called_once_with()


def test_a_failing_sink_aborts_the_stream(lv, host):
    lv.stream.recv.side_effect = [b"abc"]

    class Full(io.RawIOBase):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        streams.download_volume(host, "ceph", "disk1", Full())
    lv.stream.abort.assert_called_once_with()
