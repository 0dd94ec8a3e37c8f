"""libvirt's rbd storage backend with virtrbd's patches (patches/libvirt-9.0), against Debian's.

The lab's libvirtd is switched between the patched module (``make
libvirt-patched``) and Debian's: modules load only when the daemon starts, so
each switch restarts it (~0.3 s).  The patched tests run first, then the same
operations against Debian's module show the old behaviour, so these tests
prove that the patches are what changed it.  Whatever happens, the module
fixture leaves libvirtd running with Debian's module, the lab's normal state.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import pytest
import rbd

from virtrbd import errors
from virtrbd.backup import via_libvirt
from virtrbd.libvirt import streams
from virtrbd.libvirt.host import Host, system_daemon_run

from ..cli_helpers import virtrbd
from .libvirt_patches_kit import (
    Backends,
    Volumes,
    rados_client,
    reader_without_data_access,
    refresh_events,
    sha256,
    snapshot,
    virsh,
)

MiB = 1 << 20
#: not a multiple of the backend's 4 MiB chunk, nor of 512: every boundary gets exercised
ODD_SIZE = 9 * MiB + 4097


# --- the two backends ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backends(lab):
    switch = Backends(lab.lab)
    try:
        yield switch
    finally:
        switch.use(False)      # libvirtd back on Debian's module, also after a failure


@pytest.fixture
def patched(backends):
    backends.use(True)


@pytest.fixture
def unpatched(backends):
    backends.use(False)


@pytest.fixture
def volumes(lab, storage):
    made = Volumes(lab, storage)
    yield made
    made.remove_all()


# --- deleting: the true cause (patch 1) --------------------------------------------------------

def test_patched_delete_of_a_volume_with_snapshots_says_so(lab, patched, volumes):
    name = volumes.make(4 * MiB)
    snapshot(lab, name)
    result = virsh("vol-delete", "--pool", lab.libvirt_pool, name)
    assert result.returncode == 1
    assert f"failed to remove volume 'rbd/{name}': it has snapshots: Directory not empty" in result.stderr
    assert "No such file or directory" not in result.stderr


def test_patched_delete_of_a_volume_with_clones_names_them_as_the_cause(lab, patched, volumes):
    name = volumes.make(4 * MiB)
    clone = f"{name}-c"
    assert virsh("vol-clone", "--pool", lab.libvirt_pool, name, clone).returncode == 0
    volumes.known(clone)
    plain = virsh("vol-delete", "--pool", lab.libvirt_pool, name)
    assert plain.returncode == 1
    assert "it has snapshots: Directory not empty" in plain.stderr
    with_snaps = virsh("vol-delete", "--delete-snapshots", "--pool", lab.libvirt_pool, name)
    assert with_snaps.returncode == 1
    assert "volumes cloned from it still exist: Device or resource busy" in with_snaps.stderr
    assert "No such file or directory" not in plain.stderr + with_snaps.stderr


def test_patched_delete_of_a_volume_open_by_a_client_says_so(lab, patched, volumes):
    name = volumes.make(4 * MiB)
    with rados_client(lab) as ioctx, rbd.Image(ioctx, name):      # a VM would hold it like this
        result = virsh("vol-delete", "--pool", lab.libvirt_pool, name)
    assert result.returncode == 1
    assert f"failed to remove volume 'rbd/{name}': it is still open by a client: Device or resource busy" \
        in result.stderr


def test_patched_clone_of_a_volume_written_after_its_snapshot_works(lab, patched, volumes):
    name = volumes.make(4 * MiB)
    assert virsh("vol-clone", "--pool", lab.libvirt_pool, name, f"{name}-c1").returncode == 0
    volumes.known(f"{name}-c1")
    with rados_client(lab) as ioctx, rbd.Image(ioctx, name) as image:
        image.write(b"changed", 0)
    second = virsh("vol-clone", "--pool", lab.libvirt_pool, name, f"{name}-c2")
    assert second.returncode == 0, second.stderr
    volumes.known(f"{name}-c2")


# --- download (patch 3) ---------------------------------------------------------------------------

def test_patched_vol_download_gives_the_exact_bytes(lab, patched, volumes, tmp_path):
    content = os.urandom(ODD_SIZE)
    name = volumes.make(ODD_SIZE, content)
    out = tmp_path / "out.raw"
    result = virsh("vol-download", "--pool", lab.libvirt_pool, name, str(out))
    assert result.returncode == 0, result.stderr
    assert sha256(out.read_bytes()) == sha256(content)


@pytest.mark.parametrize("offset, length", [(0, 1), (4097, 4 * MiB), (4 * MiB - 3, 6), (ODD_SIZE - 10, 10)])
def test_patched_vol_download_honours_offset_and_length(lab, patched, volumes, tmp_path, offset, length):
    content = os.urandom(ODD_SIZE)
    name = volumes.make(ODD_SIZE, content)
    out = tmp_path / "part.raw"
    result = virsh("vol-download", "--pool", lab.libvirt_pool, name, str(out),
                   "--offset", str(offset), "--length", str(length))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == content[offset:offset + length]


def test_patched_vol_download_stops_at_the_end_like_a_file(lab, patched, volumes, tmp_path):
    content = os.urandom(2 * MiB)
    name = volumes.make(2 * MiB, content)
    out = tmp_path / "tail.raw"
    result = virsh("vol-download", "--pool", lab.libvirt_pool, name, str(out),
                   "--offset", str(MiB), "--length", str(8 * MiB))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == content[MiB:]


def test_patched_vol_download_refuses_an_offset_past_the_end(lab, patched, volumes, tmp_path):
    name = volumes.make(MiB)
    result = virsh("vol-download", "--pool", lab.libvirt_pool, name, str(tmp_path / "x"),
                   "--offset", str(MiB + 1))
    assert result.returncode == 1
    assert f"offset {MiB + 1} is beyond the end of RBD image 'rbd/{name}' ({MiB} bytes)" in result.stderr


def test_patched_vol_download_refuses_sparse_streams_clearly(lab, patched, volumes, tmp_path):
    name = volumes.make(MiB)
    result = virsh("vol-download", "--sparse", "--pool", lab.libvirt_pool, name, str(tmp_path / "x"))
    assert result.returncode == 1
    assert "sparse streams are not supported by RBD storage pools" in result.stderr


# --- upload (patches 4 and 5) -----------------------------------------------------------------------

def test_patched_vol_upload_writes_the_exact_bytes(lab, patched, volumes, tmp_path):
    name = volumes.make(ODD_SIZE)
    content = os.urandom(ODD_SIZE)
    source = tmp_path / "in.raw"
    source.write_bytes(content)
    result = virsh("vol-upload", "--pool", lab.libvirt_pool, name, str(source))
    assert result.returncode == 0, result.stderr
    assert sha256(volumes.read(name)) == sha256(content)


def test_patched_vol_upload_honours_offset_and_length(lab, patched, volumes, tmp_path):
    before = os.urandom(8 * MiB)
    name = volumes.make(8 * MiB, before)
    part = os.urandom(5 * MiB + 3)
    source = tmp_path / "part.raw"
    source.write_bytes(part)
    offset = 2 * MiB + 1
    result = virsh("vol-upload", "--pool", lab.libvirt_pool, name, str(source),
                   "--offset", str(offset), "--length", str(len(part)))
    assert result.returncode == 0, result.stderr
    assert volumes.read(name) == before[:offset] + part + before[offset + len(part):]


def test_patched_vol_upload_refuses_more_data_than_the_length(lab, patched, volumes, tmp_path):
    before = os.urandom(4 * MiB)
    name = volumes.make(4 * MiB, before)
    source = tmp_path / "big.raw"
    source.write_bytes(os.urandom(2 * MiB))
    result = virsh("vol-upload", "--pool", lab.libvirt_pool, name, str(source), "--length", "1000")
    assert result.returncode == 1
    assert f"cannot upload more than the 1000 bytes requested to RBD image 'rbd/{name}'" in result.stderr


def test_patched_vol_upload_refuses_a_range_past_the_end(lab, patched, volumes, tmp_path):
    name = volumes.make(MiB)
    source = tmp_path / "in.raw"
    source.write_bytes(os.urandom(MiB))
    fixed = virsh("vol-upload", "--pool", lab.libvirt_pool, name, str(source),
                  "--offset", "1", "--length", str(MiB))
    assert fixed.returncode == 1
    assert f"cannot upload {MiB} bytes at offset 1 to RBD image 'rbd/{name}' of {MiB} bytes" in fixed.stderr
    open_ended = virsh("vol-upload", "--pool", lab.libvirt_pool, name, str(source), "--offset", "1")
    assert open_ended.returncode == 1
    assert f"cannot upload past the end of RBD image 'rbd/{name}': {MiB - 1} bytes fit from offset 1" \
        in open_ended.stderr


def test_patched_vol_upload_error_reaches_the_client(lab, patched, volumes, tmp_path):
    """A write librbd refuses mid-stream (another client holds the exclusive lock) fails the upload
    with librbd's own cause, not a silently short or successful upload."""
    name = volumes.make(8 * MiB)
    source = tmp_path / "in.raw"
    source.write_bytes(os.urandom(8 * MiB))
    with rados_client(lab) as ioctx, rbd.Image(ioctx, name) as holder:
        holder.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        result = virsh("vol-upload", "--pool", lab.libvirt_pool, name, str(source))
        holder.lock_release()
    assert result.returncode == 1
    assert f"failed to write 4194304 bytes at offset 0 of RBD image 'rbd/{name}': Read-only file system" \
        in result.stderr
    assert volumes.read(name) == bytes(8 * MiB)


def test_patched_pool_keeps_its_volumes_after_an_upload(lab, patched, volumes, tmp_path):
    """libvirt refreshes the pool in a thread without identity once an upload stream closes (patch 4)."""
    name = volumes.make(MiB)
    source = tmp_path / "in.raw"
    source.write_bytes(os.urandom(MiB))
    with refresh_events(lab) as refreshed:
        assert virsh("vol-upload", "--pool", lab.libvirt_pool, name, str(source)).returncode == 0
        assert refreshed(30), "libvirt did not refresh the pool after the upload"
    listed = virsh("vol-list", "--pool", lab.libvirt_pool)
    assert f"rbd/{name}" in listed.stdout, listed


# --- a read librbd refuses mid-download -------------------------------------------------------------

@pytest.fixture
def reader(lab):
    """An rbd pool in libvirt for a cephx user that may open images but not read their data."""
    with reader_without_data_access(lab) as pool:
        yield pool


def test_patched_vol_download_error_reaches_the_client(lab, patched, volumes, reader, tmp_path):
    name = volumes.make(4 * MiB, os.urandom(4 * MiB))
    assert virsh("pool-refresh", reader).returncode == 0     # it can open images
    result = virsh("vol-download", "--pool", reader, name, str(tmp_path / "out.raw"))
    assert result.returncode == 1
    assert (f"failed to read 4194304 bytes at offset 0 of RBD image 'rbd/{name}': Operation not permitted"
            in result.stderr)


def test_patched_daemon_survives_failed_downloads_in_a_row(lab, patched, volumes, reader, tmp_path):
    """Before patch 0006 each failed download made the daemon send error after error until the client
    went away, and libvirtd died of a corrupted heap in each of four such loops (at the 38th and the 40th
    where counted)."""
    name = volumes.make(MiB, os.urandom(MiB))
    assert virsh("pool-refresh", reader).returncode == 0
    daemon = lab.lab.rbd_backend()["pid"]
    for attempt in range(100):
        result = virsh("vol-download", "--pool", reader, name, str(tmp_path / "out.raw"))
        assert "Operation not permitted" in result.stderr, (attempt, result.stderr)
    assert (lab.lab.rbd_backend() or {}).get("pid") == daemon, "libvirtd ended during the failed downloads"


# --- virtrbd's own use of the new path --------------------------------------------------------------

def test_patched_streams_are_detected(lab, patched):
    with Host(lab.config.libvirt.uri) as host:
        assert streams.supports_volume_upload(host, lab.libvirt_pool)
        assert streams.supports_volume_download(host, lab.libvirt_pool)


def test_patched_upload_and_download_through_virtrbd(lab, patched, volumes):
    content = os.urandom(ODD_SIZE)
    name = volumes.make(ODD_SIZE)
    with Host(lab.config.libvirt.uri) as host:
        sent = streams.upload_volume(host, lab.libvirt_pool, name, io.BytesIO(content))
        sink = io.BytesIO()
        received = streams.download_volume(host, lab.libvirt_pool, name, sink)
        part = io.BytesIO()
        streams.download_volume(host, lab.libvirt_pool, name, part, offset=MiB + 1, length=100)
    assert sent == received == ODD_SIZE
    assert sha256(sink.getvalue()) == sha256(content) == sha256(volumes.read(name))
    assert part.getvalue() == content[MiB + 1:MiB + 101]


def test_patched_upload_failure_through_virtrbd_is_one_virtrbd_error(lab, patched, volumes):
    name = volumes.make(MiB)
    with Host(lab.config.libvirt.uri) as host:
        with pytest.raises(errors.UsageError, match=f"cannot upload past the end of RBD image 'rbd/{name}'"):
            streams.upload_volume(host, lab.libvirt_pool, name, io.BytesIO(bytes(2 * MiB)))
        with pytest.raises(errors.UsageError, match="the source ended after 10 of the 20 bytes"):
            streams.upload_volume(host, lab.libvirt_pool, name, io.BytesIO(bytes(10)), length=20)


# --- Debian's module: the behaviour the patches change ---------------------------------------------

def test_unpatched_delete_loses_the_cause(lab, unpatched, volumes):
    with_snapshot = volumes.make(4 * MiB)
    snapshot(lab, with_snapshot)
    open_one = volumes.make(4 * MiB)
    with rados_client(lab) as ioctx, rbd.Image(ioctx, open_one):
        results = [virsh("vol-delete", "--pool", lab.libvirt_pool, with_snapshot),
                   virsh("vol-delete", "--pool", lab.libvirt_pool, open_one)]
    for result in results:
        assert result.returncode == 1
        assert "failed to remove volume" in result.stderr
        for cause in ("Directory not empty", "has snapshots", "Device or resource busy", "open by a client"):
            assert cause not in result.stderr


def test_unpatched_clone_of_a_volume_written_after_its_snapshot_fails(lab, unpatched, volumes):
    name = volumes.make(4 * MiB)
    assert virsh("vol-clone", "--pool", lab.libvirt_pool, name, f"{name}-c1").returncode == 0
    volumes.known(f"{name}-c1")
    with rados_client(lab) as ioctx, rbd.Image(ioctx, name) as image:
        image.write(b"changed", 0)
    second = virsh("vol-clone", "--pool", lab.libvirt_pool, name, f"{name}-c2")
    assert second.returncode == 1
    assert "Failed to clone vol" in second.stderr


def test_unpatched_has_no_upload_or_download(lab, unpatched, volumes, tmp_path):
    name = volumes.make(MiB)
    source = tmp_path / "in.raw"
    source.write_bytes(bytes(MiB))
    upload = virsh("vol-upload", "--pool", lab.libvirt_pool, name, str(source))
    download = virsh("vol-download", "--pool", lab.libvirt_pool, name, str(tmp_path / "out.raw"))
    assert upload.returncode == download.returncode == 1
    assert "storage pool doesn't support volume upload" in upload.stderr
    assert "storage pool doesn't support volume download" in download.stderr


def test_unpatched_streams_are_detected_as_missing(lab, unpatched, volumes):
    volumes.make(MiB)                               # a volume to probe on
    with Host(lab.config.libvirt.uri) as host:
        assert not streams.supports_volume_upload(host, lab.libvirt_pool)
        assert not streams.supports_volume_download(host, lab.libvirt_pool)
        with pytest.raises(errors.LibvirtError, match="needs virtrbd's patches"):
            streams.upload_volume(host, lab.libvirt_pool, volumes.made[-1], io.BytesIO(b"x"))


def test_lab_status_shows_the_backend_libvirtd_runs(lab, backends):
    backends.use(True)
    patched_status = virtrbd("lab", "status")
    backends.use(False)
    system_status = virtrbd("lab", "status")
    assert f"rbd backend patched (built from patches/), {lab.lab.backend_dir}" in patched_status.out
    assert "rbd backend Debian's, /usr/lib/x86_64-linux-gnu/libvirt/storage-backend/" in system_status.out


# --- restore takes libvirt's upload where the daemon has it ---------------------------------------

def _restore_path(lab, storage, tmp_path) -> tuple[dict, list[str]]:
    """Back up an image and restore it with the command; the restored bytes checked.  What the restore
    said (--json: the path it took, its peak memory), and the restored image's name and any temporary one
    as libvirt's volume list shows them then.
    Both images are removed afterwards, whatever happens."""
    name = f"virtrbd-up-{uuid.uuid4().hex[:6]}"
    tmp_path.mkdir(exist_ok=True)
    try:
        storage.create_image(name, 9 << 20)
        with storage.cluster.image("rbd", name) as image:
            image.write(os.urandom(1 << 20), 3 << 20)
            image.write(os.urandom(4097), (8 << 20) - 7)
            image.create_snap("s1")
        backup = virtrbd("backup", f"rbd/{name}@s1", str(tmp_path), env=lab.env)
        assert backup.code == 0, backup.err
        restored = virtrbd("restore", str(next(tmp_path.glob("*.raw"))), f"rbd/{name}-r", "--json", env=lab.env)
        assert restored.code == 0, restored.err
        with storage.cluster.image("rbd", f"{name}-r", read_only=True) as a, \
                storage.cluster.image("rbd", name, snapshot="s1", read_only=True) as b:
            assert a.read(0, a.size()) == b.read(0, b.size())
        table = virsh("vol-list", "--pool", lab.libvirt_pool).stdout.splitlines()
        listed = [line.split()[0] for line in table[2:] if line.strip()]      # under the header and dashes
        return json.loads(restored.out), [v for v in listed if v.startswith(f"{name}-r")]
    finally:
        for image in (f"{name}-r", name):
            if storage.image_exists(image):
                storage.remove_image(image, with_snapshots=True)


def test_restore_uploads_through_a_patched_libvirt(lab, patched, storage, tmp_path):
    said, listed = _restore_path(lab, storage, tmp_path)
    assert said["path"] == "libvirt"
    assert len(listed) == 1 and listed[0].endswith("-r"), listed     # libvirt knows it by its name, and only so


def test_restore_falls_back_to_librbd_without_the_patches(lab, unpatched, storage, tmp_path):
    assert _restore_path(lab, storage, tmp_path)[0]["path"] == "librbd"


def test_the_daemons_no_is_remembered_until_it_restarts(lab, backends, storage, tmp_path):
    """The next restores skip loading libvirt and asking (~16 MiB less at their peak); a restarted daemon,
    which may run another backend, is asked again."""
    backends.use(False)
    via_libvirt.MEMO.unlink(missing_ok=True)          # this daemon's answer not known yet
    asked = _restore_path(lab, storage, tmp_path / "a")[0]
    run = system_daemon_run("qemu:///system")
    assert asked["path"] == "librbd" and run is not None
    assert json.loads(via_libvirt.MEMO.read_text())["qemu:///system"] == {"daemon": run, "upload": False}
    known = _restore_path(lab, storage, tmp_path / "b")[0]
    assert known["path"] == "librbd"
    assert known["peak_rss_bytes"] <= asked["peak_rss_bytes"] - 8 * MiB, (asked, known)
    backends.use(True)
    assert _restore_path(lab, storage, tmp_path / "c")[0]["path"] == "libvirt"
