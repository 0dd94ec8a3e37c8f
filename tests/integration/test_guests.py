"""Real Linux guests on the lab: booted from RBD clones the hook makes, reached through their agent, and judged
by their filesystems (``debugfs`` and ``e2fsck`` read a RAW backup on the host, nothing mounted)."""

from __future__ import annotations

import hashlib
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import libvirt
import pytest

from virtrbd import backup
from virtrbd.lab.guest.golden import DEFAULT_FILES

from ..cli_helpers import assert_one_line_error, virtrbd

PREFIX = "virtrbd-test-guest-"


@pytest.fixture(scope="module")
def installed_hook(lab):
    result = virtrbd("hook", "install", env=lab.env)
    assert result.code == 0, result.err
    yield
    virtrbd("hook", "uninstall", env=lab.env)


@pytest.fixture(scope="module")
def golden(lab, installed_hook):
    """A golden image holding an ext4 filesystem with the default files."""
    name = f"{PREFIX}gold-{uuid.uuid4().hex[:6]}"
    made = virtrbd("lab", "golden", "create", f"rbd/{name}", "--size", "64M", env=lab.env)
    assert made.code == 0, made.err
    yield f"rbd/{name}@golden"
    from virtrbd import Storage
    from virtrbd.errors import BusyError
    with Storage(lab.conf_path) as storage:
        for image in storage.list_images():
            if image.startswith(PREFIX):
                # a process killed with an image open (the fault tests) leaves its watch for the OSD's
                # watch timeout (30 s): the image is busy until then
                deadline = time.monotonic() + 60
                while True:
                    try:
                        storage.remove_image(image, with_snapshots=True, flatten_children=True)
                        break
                    except BusyError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(1)


@pytest.fixture
def guests(lab):
    """names(n) → n new guest names; every guest made is removed after the test."""
    tag = uuid.uuid4().hex[:6]
    made: list[str] = []

    def names(count: int = 1) -> list[str]:
        made.extend(f"{PREFIX}{tag}-{len(made) + i}" for i in range(count))
        return made[-count:]

    yield names
    handle = lab.lab.guests()
    for name in made:
        try:
            handle.remove(name)
        except Exception:            # noqa: BLE001 - gone already, or never made
            pass


def vm(lab, *args):
    return virtrbd("lab", "vm", *args, env=lab.env)


def test_a_guest_boots_from_the_hooks_clone_and_its_agent_answers(lab, golden, guests):
    name, = guests()
    made = vm(lab, "create", name, "--disk", f"rbd/{name}-disk", "--clone-of", golden, "--ephemeral")
    assert made.code == 0, made.err
    uname = vm(lab, "exec", name, "--", "uname", "-r")
    assert uname.code == 0 and uname.out.strip().endswith("-cloud-amd64")
    assert vm(lab, "exec", name, "--", "sh", "-c", "exit 7").code == 7
    status = virtrbd("lab", "status", "--json", env=lab.env)
    assert '"domain_type"' in status.out                                  # the lab says KVM or TCG


def test_the_golden_files_read_back_in_the_guest_with_their_checksums(lab, golden, guests):
    name, = guests()
    assert vm(lab, "create", name, "--disk", f"rbd/{name}-disk", "--clone-of", golden, "--ephemeral").code == 0
    checked = vm(lab, "exec", name, "--", "sh", "-c", "cd /mnt/vda && sha256sum -c CHECKSUMS")
    assert checked.code == 0, checked.out + checked.err
    assert sorted(line.split(":")[0] for line in checked.out.splitlines()) == sorted(DEFAULT_FILES)


def records_in(raw_file) -> tuple[int, list[str]]:
    """The last record with a valid checksum in /records of the filesystem in ``raw_file``, and every line."""
    dumped = subprocess.run(["debugfs", "-R", "cat /records", str(raw_file)], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr
    last = 0
    lines = dumped.stdout.splitlines()
    for line in lines:
        number, target, checksum = line.split()
        assert checksum == hashlib.sha256(f"{number} {target}".encode()).hexdigest(), line
        last = int(number)
    return last, lines


def test_records_written_in_the_guest_are_in_a_raw_backup_of_a_later_snapshot(lab, golden, guests, storage,
                                                                             tmp_path):
    name, = guests()
    disk = f"rbd/{name}-disk"                                             # persistent: it outlives the guest
    assert vm(lab, "create", name, "--disk", disk, "--clone-of", golden).code == 0
    assert vm(lab, "exec", name, "--", "records", "start", "vda").code == 0
    assert vm(lab, "exec", name, "--", "sleep", "2").code == 0
    assert vm(lab, "exec", name, "--", "records", "stop").code == 0
    durable = int(vm(lab, "exec", name, "--", "records", "durable").out)
    in_guest = vm(lab, "exec", name, "--", "records", "last", "vda").out.split()
    assert durable > 0 and in_guest == ["vda", str(durable)]
    assert vm(lab, "stop", name).code == 0                               # filesystems unmounted
    storage.create_snapshot(f"{disk}@after")
    result = backup.backup(storage, f"{disk}@after", tmp_path)
    fsck = subprocess.run(["e2fsck", "-fn", str(result.path)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr                # a clean filesystem
    last, lines = records_in(result.path)
    assert last == durable and len(lines) == durable


def test_ten_guests_run_at_once_from_one_golden_image(lab, golden, guests):
    names = guests(10)
    with ThreadPoolExecutor(10) as pool:
        made = list(pool.map(lambda name: vm(lab, "create", name, "--disk", f"rbd/{name}-disk", "--clone-of",
                                             golden, "--ephemeral"), names))
    assert [m.code for m in made] == [0] * 10, [m.err for m in made if m.code]
    answers = [vm(lab, "exec", name, "--", "cat", "/mnt/vda/hello.txt").out for name in names]
    assert answers == [DEFAULT_FILES["hello.txt"].decode()] * 10


def test_a_guest_that_does_not_come_up_in_time_is_one_line_and_leaves_no_domain(lab, golden, guests):
    name, = guests()
    failed = vm(lab, "create", name, "--disk", f"rbd/{name}-disk", "--clone-of", golden, "--ephemeral",
                "--timeout", "0.1")
    assert_one_line_error(failed, 1, "its agent did not answer within 0.1 s")
    assert "console ended" in failed.err
    conn = libvirt.open(lab.config.libvirt.uri)
    try:
        assert name not in [dom.name() for dom in conn.listAllDomains()]
    finally:
        conn.close()


def test_a_guest_on_a_missing_golden_snapshot_is_one_line_and_leaves_no_domain(lab, installed_hook, guests):
    name, = guests()
    failed = vm(lab, "create", name, "--disk", f"rbd/{name}-disk", "--clone-of", "rbd/no-such-image@golden")
    assert_one_line_error(failed, 1, "does not exist")
    conn = libvirt.open(lab.config.libvirt.uri)
    try:
        assert name not in [dom.name() for dom in conn.listAllDomains()]
    finally:
        conn.close()
