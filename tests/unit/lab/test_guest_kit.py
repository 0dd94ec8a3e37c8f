"""The guest kit's pieces that need no libvirt: the initramfs format, the domain document, failures named."""

from __future__ import annotations

import errno
import gzip
import shutil
import stat
import subprocess

import pytest
from lxml import etree

from virtrbd.errors import LabError
from virtrbd.lab.guest import cpio, kit
from virtrbd.lab.guest.domain import AGENT_CHANNEL, GuestSpec, guest_xml, targets
from virtrbd.spec import ImageSpec


def parse_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, (rdevmajor, rdevminor)) of each entry, by the newc layout of the kernel's
    Documentation/driver-api/early-userspace/buffer-format.rst."""
    entries, at = [], 0
    while True:
        assert data[at:at + 6] == b"070701"
        fields = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        name_size, file_size = fields[11], fields[6]
        name_at = at + 110
        name = data[name_at:name_at + name_size - 1].decode()
        assert data[name_at + name_size - 1] == 0
        body_at = name_at + name_size + (-(110 + name_size) % 4)
        body = data[body_at:body_at + file_size]
        at = body_at + file_size + (-file_size % 4)
        if name == cpio.TRAILER:
            assert at == len(data)
            return entries
        entries.append((name, fields[1], body, (fields[9], fields[10])))


def test_the_archive_holds_every_entry_in_the_newc_layout():
    entries = [cpio.directory("bin"), cpio.file("bin/x", b"abc"), cpio.file("init", b"#!/bin/sh\n" * 3),
               cpio.symlink("bin/sh", "x"), cpio.char_device("dev/console", 5, 1), cpio.file("empty", b"")]
    parsed = parse_newc(cpio.archive(entries))
    assert [name for name, *_ in parsed] == ["bin", "bin/x", "init", "bin/sh", "dev/console", "empty"]
    assert parsed[1][2] == b"abc" and stat.S_ISREG(parsed[1][1]) and parsed[1][1] & 0o777 == 0o755
    assert stat.S_ISLNK(parsed[3][1]) and parsed[3][2] == b"x"
    assert stat.S_ISCHR(parsed[4][1]) and parsed[4][3] == (5, 1)
    assert gzip.decompress(cpio.initramfs(entries)) == cpio.archive(entries)


@pytest.mark.skipif(shutil.which("bsdtar") is None and shutil.which("cpio") is None, reason="no cpio reader here")
def test_an_independent_reader_lists_the_archive(tmp_path):
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio.archive([cpio.directory("d"), cpio.file("d/f", b"data")]))
    tool = ["cpio", "-t"] if shutil.which("cpio") else ["bsdtar", "-tf", "-"]
    listed = subprocess.run(tool, input=archive.read_bytes(), capture_output=True, check=True).stdout.split()
    assert listed == [b"d", b"d/f"]


def test_disks_are_vda_onwards():
    assert targets(3) == ["vda", "vdb", "vdc"] and targets(0) == []
    with pytest.raises(ValueError):
        targets(27)


def test_the_domain_boots_the_kit_with_the_agent_channel_and_rbd_disks(conf, tmp_path):
    built = kit.Kit(tmp_path / "vmlinuz", tmp_path / "initrd.gz", "key", "6.1.0-57-cloud-amd64", 0.0, False)
    spec = GuestSpec("g1", (ImageSpec("rbd", "g1-disk"), ImageSpec("rbd", "g1-data")),
                     clone_of=ImageSpec("rbd", "gold", "golden"), ephemeral=True)
    root = etree.fromstring(guest_xml(conf, spec, built, domain_type="qemu", console=tmp_path / "g1.log"))
    assert root.get("type") == "qemu" and root.findtext("name") == "g1"
    assert root.findtext("os/kernel") == str(tmp_path / "vmlinuz")
    assert root.findtext("os/initrd") == str(tmp_path / "initrd.gz")
    assert "console=ttyS0" in root.findtext("os/cmdline")
    assert root.find("features/acpi") is not None                    # powers off instead of halting
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]
    assert [d.find("source").get("name") for d in disks] == ["rbd/g1-disk", "rbd/g1-data"]
    assert root.find("devices/channel/target").get("name") == AGENT_CHANNEL
    assert root.find("devices/serial/source").get("path") == str(tmp_path / "g1.log")
    markup = root.find("metadata/{urn:x-virtrbd:domain:1}clones/{urn:x-virtrbd:domain:1}disk")
    assert (markup.get("target"), markup.get("clone-of"), markup.get("ephemeral")) == ("vda", "rbd/gold@golden",
                                                                                       "yes")


def test_a_package_apt_does_not_know_is_named(monkeypatch):
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt here")
    monkeypatch.setattr(kit, "PACKAGES", ("virtrbd-no-such-package",))
    with pytest.raises(LabError, match="virtrbd-no-such-package"):
        kit._resolve_packages()


def test_no_space_left_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(kit, "_resolve_packages", lambda: {"p": {"Version": "1", "Filename": "p_1_all.deb"}})

    def full(self, packages):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(kit.GuestKit, "_download", full)
    with pytest.raises(LabError, match=r"building the guest kit in .*: no space left on the device"):
        kit.GuestKit(tmp_path / "kit").build()


def test_the_file_apt_get_download_saves_a_package_as():
    info = {"Version": "1:1.35.0-4+deb12u1+b1", "Filename": "pool/main/b/busybox/busybox-static_1.35.0-4_amd64.deb"}
    assert kit._deb_name("busybox-static", info) == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"


@pytest.mark.parametrize("script", sorted(path.name for path in kit.FILES.iterdir()))
def test_the_guests_scripts_are_shell_that_parses(script):
    done = subprocess.run(["sh", "-n", str(kit.FILES / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_judge_finds_the_last_valid_record_of_a_filesystem(tmp_path):
    import hashlib

    from virtrbd.lab.guest.golden import make_filesystem
    from virtrbd.lab.guest.judge import filesystem_is_clean, last_record
    tree = tmp_path / "tree"
    tree.mkdir()
    lines = [f"{n} vdb {hashlib.sha256(f'{n} vdb'.encode()).hexdigest()}" for n in range(1, 6)]
    (tree / "records").write_text("\n".join(lines) + "\n6 vdb 0123abc\n")      # the 6th torn: not valid
    raw = tmp_path / "fs.raw"
    make_filesystem(raw, 8 << 20, tree)
    assert filesystem_is_clean(raw)[0]
    assert last_record(raw) == 5
    with pytest.raises(LabError, match="debugfs cannot read /nothing"):
        last_record(raw, "/nothing")
