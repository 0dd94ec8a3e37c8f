"""Which rbd storage backend the lab's libvirtd loads: the folder it gets, and how the lab tells."""

import os

import pytest

from virtrbd.errors import LabError
from virtrbd.lab import Lab, libvirt_side

from ...cli_helpers import assert_one_line_error, virtrbd


@pytest.fixture
def system_dir(tmp_path, monkeypatch):
    folder = tmp_path / "storage-backend"
    folder.mkdir()
    for kind in ("fs", "logical", "rbd", "scsi"):
        (folder / f"libvirt_storage_backend_{kind}.so").write_bytes(f"debian {kind}".encode())
    monkeypatch.setattr(libvirt_side, "SYSTEM_BACKEND_DIR", folder)
    return folder


def test_backend_folder_holds_a_copy_of_the_patched_module_and_links_to_the_others(tmp_path, system_dir):
    module = tmp_path / "built.so"
    module.write_bytes(b"patched rbd")
    folder = libvirt_side.prepare_backend_dir(tmp_path / "lab" / "backends", module)
    rbd = folder / libvirt_side.RBD_MODULE
    assert not rbd.is_symlink() and rbd.read_bytes() == b"patched rbd"
    others = sorted(p.name for p in folder.iterdir() if p.name != libvirt_side.RBD_MODULE)
    assert others == ["libvirt_storage_backend_fs.so", "libvirt_storage_backend_logical.so",
                      "libvirt_storage_backend_scsi.so"]
    assert all(os.readlink(folder / name) == str(system_dir / name) for name in others)


def test_backend_folder_is_rebuilt_from_scratch(tmp_path, system_dir):
    module = tmp_path / "built.so"
    module.write_bytes(b"first")
    folder = libvirt_side.prepare_backend_dir(tmp_path / "backends", module)
    (folder / "leftover.so").write_bytes(b"x")
    (system_dir / "libvirt_storage_backend_scsi.so").unlink()
    module.write_bytes(b"second")
    libvirt_side.prepare_backend_dir(folder, module)
    assert (folder / libvirt_side.RBD_MODULE).read_bytes() == b"second"
    assert sorted(p.name for p in folder.iterdir()) == ["libvirt_storage_backend_fs.so",
                                                       "libvirt_storage_backend_logical.so",
                                                       libvirt_side.RBD_MODULE]


def test_a_rebuild_never_changes_the_file_a_running_daemon_mapped(tmp_path, system_dir):
    module = tmp_path / "built.so"
    module.write_bytes(b"first")
    folder = libvirt_side.prepare_backend_dir(tmp_path / "backends", module)
    with open(folder / libvirt_side.RBD_MODULE, "rb") as loaded:      # as libvirtd holds it
        module.write_bytes(b"second")
        libvirt_side.prepare_backend_dir(folder, module)
        assert loaded.read() == b"first"


MAPS = """\
55d0c0a00000-55d0c0a2a000 r--p 00000000 fe:00 1234  /usr/sbin/libvirtd
7f1c2c000000-7f1c2c004000 r--p 00000000 fe:00 2222  /usr/lib/x86_64-linux-gnu/libvirt/storage-backend/libvirt_storage_backend_fs.so
7f1c2d000000-7f1c2d004000 r--p 00000000 fe:00 3333  {rbd}
7f1c2e000000-7f1c2e021000 rw-p 00000000 00:00 0
"""


@pytest.mark.parametrize("path", [
    "/usr/lib/x86_64-linux-gnu/libvirt/storage-backend/libvirt_storage_backend_rbd.so",
    "/var/tmp/virtrbd-lab/libvirt-storage-backend/libvirt_storage_backend_rbd.so",
    "/var/tmp/virtrbd-lab/libvirt-storage-backend/libvirt_storage_backend_rbd.so (deleted)",
])
def test_the_loaded_rbd_module_is_read_from_the_process_maps(path):
    assert libvirt_side.rbd_module_in_maps(MAPS.format(rbd=path)) == path


def test_a_process_without_the_rbd_module_has_none():
    assert libvirt_side.rbd_module_in_maps(MAPS.format(rbd="/usr/lib/libc.so.6")) is None
    assert libvirt_side.loaded_rbd_module(os.getpid()) is None
    assert libvirt_side.loaded_rbd_module(2 ** 22 + 1) is None


def test_a_missing_build_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv(libvirt_side.BUILT_MODULE_ENV, str(tmp_path / "none.so"))
    with pytest.raises(LabError, match=r"not built .*run 'make libvirt-patched'"):
        libvirt_side.built_module()


def test_up_with_the_patched_backend_unbuilt_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(libvirt_side.BUILT_MODULE_ENV, str(tmp_path / "none.so"))
    lab = Lab(tmp_path / "lab")
    with pytest.raises(LabError, match="make libvirt-patched"):
        lab.up(libvirt_patched=True)
    assert not lab.root.exists()


def test_cli_up_with_the_patched_backend_unbuilt_is_one_line(tmp_path):
    result = virtrbd("lab", "--dir", str(tmp_path / "lab"), "up", "--libvirt-patched",
                     env={libvirt_side.BUILT_MODULE_ENV: str(tmp_path / "none.so")})
    assert_one_line_error(result, 1, "not built", "make libvirt-patched")
    assert not (tmp_path / "lab").exists()

