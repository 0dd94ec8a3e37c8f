"""KVM or TCG for the lab's guests: a machine whose QEMU cannot use /dev/kvm runs its guests under TCG."""

from __future__ import annotations

import json
import os

import libvirt

from tests.unit.fakes import libvirt_error
from virtrbd.lab.guest import ACCELERATOR_FILE, vms
from virtrbd.lab.guest.kit import Kit

QEMU_SAID = ("internal error: process exited while connecting to monitor: Could not access KVM kernel module: "
             "No such file or directory")


def test_a_kvm_that_qemu_cannot_open_means_tcg_and_why_is_kept(tmp_path, conf, mocker):
    """In a container /dev/kvm may be there while QEMU cannot open it: the probe's domain does not start."""
    real_exists = os.path.exists
    mocker.patch.object(vms.os.path, "exists", side_effect=lambda path: path == "/dev/kvm" or real_exists(path))
    conn = mocker.create_autospec(libvirt.virConnect, instance=True)
    conn.createXML.side_effect = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, QEMU_SAID, domain=libvirt.VIR_FROM_QEMU)
    mocker.patch.object(libvirt, "open", autospec=True, return_value=conn)
    kit = Kit(tmp_path / "vmlinuz", tmp_path / "initrd.gz", "key", "6.1.0-57-cloud-amd64", 0.0, False)
    guests = vms.Guests(conf, tmp_path / "guests")

    assert guests.accelerator(kit) == "qemu"

    said = json.loads((tmp_path / "guests" / ACCELERATOR_FILE).read_text())
    assert said["domain_type"] == "qemu"
    assert said["why"].startswith("QEMU could not use KVM: starting the KVM probe: internal error")
    assert conn.createXML.call_count == 1
    assert guests.accelerator(kit) == "qemu" and conn.createXML.call_count == 1       # found out once, kept
