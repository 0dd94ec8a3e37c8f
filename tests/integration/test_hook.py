"""The qemu hook in the lab's real libvirtd: domains whose disks are clones of one golden snapshot."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import libvirt
import pytest

from virtrbd import errors, hook, hook_install
from virtrbd.lab.domains import BOOT_SECTOR, remove_domain, wait_for_reads
from virtrbd.lab.domains import domain_xml as make_domain_xml

from ..cli_helpers import virtrbd

PREFIX = "virtrbd-test-"


def domain_xml(lab, name, image, **kwargs) -> str:
    return make_domain_xml(lab.config, name, image, domain_type=lab.state["libvirt"]["domain_type"], **kwargs)


@pytest.fixture(scope="module")
def installed_hook(lab):
    """The hook installed into the lab's libvirtd for this module, removed afterwards."""
    result = virtrbd("hook", "install", env=lab.env)
    assert result.code == 0, result.err
    yield hook_install.script_path()
    virtrbd("hook", "uninstall", env=lab.env)


@pytest.fixture
def conn(lab):
    connection = libvirt.open(lab.config.libvirt.uri)
    yield connection
    connection.close()


@pytest.fixture
def fleet(conn, storage):
    """Names of the domains and images a test makes; all destroyed, undefined and removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    made = []

    def name(i) -> str:
        made.append(f"{PREFIX}{tag}-{i}")
        return made[-1]

    yield name
    for dom in made:
        remove_domain(conn, dom)
    for image in storage.list_images():
        if image.startswith(f"{PREFIX}{tag}"):
            storage.remove_image(image, with_snapshots=True, flatten_children=True)


@pytest.fixture
def golden(storage, fleet):
    base = fleet("golden")
    storage.create_image(base, 8 << 20)
    with storage.cluster.image("rbd", base) as image:
        image.write(BOOT_SECTOR, 0)
    return str(storage.make_golden(base))


def owner_of(storage, image: str) -> dict:
    with storage.cluster.image("rbd", image, read_only=True) as img:
        return json.loads(img.metadata_get(hook.OWNER_KEY))


def test_twenty_domains_boot_from_clones_and_release_only_ephemeral_ones(installed_hook, lab, conn, storage,
                                                                         fleet, golden):
    names = [fleet(i) for i in range(20)]
    domains = []
    for i, name in enumerate(names):
        xml = domain_xml(lab, name, f"rbd/{name}-disk", clone_of=golden, ephemeral=i % 2 == 0)
        dom = conn.defineXML(xml)
        dom.create()
        domains.append(dom)
    images = set(storage.list_images())
    assert all(f"{name}-disk" in images for name in names)
    for i, name in enumerate(names):
        record = owner_of(storage, f"{name}-disk")
        assert record == {"domain": domains[i].UUIDString(), "ephemeral": i % 2 == 0}
    reads = wait_for_reads(domains)
    assert all(count > 0 for count in reads.values()), reads

    for dom in domains[::2]:
        dom.destroy()
    images = set(storage.list_images())
    assert not any(f"{name}-disk" in images for name in names[::2])        # ephemeral: gone
    assert all(f"{name}-disk" in images for name in names[1::2])            # persistent: kept

    persistent = domains[1]
    image = f"{names[1]}-disk"
    image_id = storage.info(image).id
    persistent.destroy()
    persistent.create()
    assert storage.info(image).id == image_id          # the same clone, reused
    assert wait_for_reads([persistent])[persistent.name()] > 0


def test_a_missing_golden_snapshot_stops_the_start_with_virtrbds_message(installed_hook, lab, conn, storage,
                                                                          fleet, golden):
    name = fleet("nogold")
    missing = golden.replace("@golden", "@no-such-snapshot")
    dom = conn.defineXML(domain_xml(lab, name, f"rbd/{name}-disk", clone_of=missing, ephemeral=True))
    with pytest.raises(libvirt.libvirtError) as info:
        dom.create()
    message = str(info.value)
    assert "virtrbd:" in message and f"snapshot {missing}: does not exist" in message
    assert not dom.isActive()
    assert f"{name}-disk" not in storage.list_images()


def test_ten_domains_started_at_once_all_start(installed_hook, lab, conn, storage, fleet, golden):
    names = [fleet(f"p{i}") for i in range(10)]
    domains = [conn.defineXML(domain_xml(lab, n, f"rbd/{n}-disk", clone_of=golden, ephemeral=True)) for n in names]
    failures = []
    barrier = threading.Barrier(len(domains))

    def start(dom) -> None:
        own = libvirt.open(lab.config.libvirt.uri)   # one connection per "agent"
        try:
            barrier.wait()
            own.lookupByUUIDString(dom.UUIDString()).create()
        except libvirt.libvirtError as exc:
            failures.append(f"{dom.name()}: {exc}")
        finally:
            own.close()

    threads = [threading.Thread(target=start, args=(d,)) for d in domains]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert all(d.isActive() for d in domains)
    assert {f"{n}-disk" for n in names} <= set(storage.list_images())
    assert len(storage.children(golden)) == 10


def test_a_domain_without_markup_is_left_to_libvirt(installed_hook, lab, conn, storage, fleet):
    name = fleet("plain")
    storage.create_image(f"{name}-disk", 4 << 20)
    with storage.cluster.image("rbd", f"{name}-disk") as image:
        image.write(BOOT_SECTOR, 0)
    dom = conn.defineXML(domain_xml(lab, name, f"rbd/{name}-disk"))
    dom.create()
    dom.destroy()
    assert storage.image_exists(f"{name}-disk")
    with storage.cluster.image("rbd", f"{name}-disk", read_only=True) as image:
        with pytest.raises(KeyError):
            image.metadata_get(hook.OWNER_KEY)


def test_an_existing_image_of_someone_else_is_neither_replaced_nor_released(installed_hook, lab, conn, storage,
                                                                            fleet, golden):
    name = fleet("decoy")
    storage.create_image(f"{name}-disk", 4 << 20)            # a user's own image under the disk's name
    with storage.cluster.image("rbd", f"{name}-disk") as image:
        image.write(BOOT_SECTOR, 0)
    dom = conn.defineXML(domain_xml(lab, name, f"rbd/{name}-disk", clone_of=golden, ephemeral=True))
    dom.create()
    dom.destroy()
    assert storage.image_exists(f"{name}-disk")
    assert storage.info(f"{name}-disk").parent_chain == ()


def test_xml_disk_clone_of_marks_a_domain_that_then_boots_from_its_clone(installed_hook, lab, conn, storage,
                                                                          fleet, golden):
    name = fleet("marked")
    bare = domain_xml(lab, name, "rbd/unused")
    bare = bare[:bare.index("<disk")] + bare[bare.index("</disk>") + len("</disk>"):]
    assert "<disk" not in bare
    dom = conn.defineXML(bare)
    args = ["xml", "disk", "--image", f"rbd/{name}-disk", "--target", "vda", "--clone-of", golden,
            "--ephemeral", "--clone-size", "16M", "--define", "--domain", name]
    first = virtrbd(*args, env=lab.env)
    assert first.code == 0 and "attached" in first.out and f"marked as an ephemeral clone of {golden}" in first.out
    again = virtrbd(*args, env=lab.env)
    assert again.code == 0 and "unchanged" in again.out
    dom.create()
    assert storage.image_size(f"{name}-disk") == 16 << 20
    assert wait_for_reads([dom])[name] > 0
    dom.destroy()
    assert not storage.image_exists(f"{name}-disk")


def test_the_marked_disk_is_made_beside_disks_the_hook_does_not_judge(installed_hook, lab, conn, storage, fleet,
                                                                      golden, qemu_readable):
    """Beside the marked disk: an rbd image under a legacy-looking name, a hostless rbd disk (monitors from
    <config file>) and a file disk. libvirt starts such a domain; the hook must neither refuse nor touch them."""
    name = fleet("mixed")
    legacy, hostless = f"{name}-old:rbd_cache=true", f"{name}-hostless"
    (qemu_readable / "file.img").write_bytes(bytes(1 << 20))
    monitor = lab.config.ceph.monitors[0]
    ceph_conf = qemu_readable / "ceph.conf"          # what a host's /etc/ceph/ceph.conf would say: the monitors
    ceph_conf.write_text(f"[global]\nmon_host = {monitor.host}:{monitor.port}\n")
    auth = (f"<auth username='{lab.config.ceph.client_id}'>"
            f"<secret type='ceph' uuid='{lab.config.libvirt.secret_uuid}'/></auth>")
    others = (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>{auth}"
              f"<source protocol='rbd' name='rbd/{legacy}'><host name='{monitor.host}' port='{monitor.port}'/>"
              f"</source><target dev='vdb' bus='virtio'/></disk>"
              f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>{auth}"
              f"<source protocol='rbd' name='rbd/{hostless}'><config file='{ceph_conf}'/></source>"
              f"<target dev='vdc' bus='virtio'/></disk>"
              f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
              f"<source file='{qemu_readable}/file.img'/><target dev='vdd' bus='virtio'/></disk>")
    xml = domain_xml(lab, name, f"rbd/{name}-disk", clone_of=golden, ephemeral=True)
    try:
        for image in (legacy, hostless):
            storage.cluster.create("rbd", image, 4 << 20)
        dom = conn.defineXML(xml.replace("</devices>", others + "</devices>"))
        dom.create()
        assert wait_for_reads([dom])[name] > 0
        assert owner_of(storage, f"{name}-disk")["ephemeral"] is True
        dom.destroy()
        assert not storage.image_exists(f"{name}-disk")
        for image in (legacy, hostless):
            with storage.cluster.image("rbd", image, read_only=True) as img, pytest.raises(KeyError):
                img.metadata_get(hook.OWNER_KEY)
    finally:
        remove_domain(conn, name)
        for image in (legacy, hostless):
            if image in storage.list_images():
                remove_when_closed(storage, image)


@pytest.fixture
def qemu_readable():
    """A folder QEMU's own user can read (pytest's tmp_path is root's alone), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="virtrbd-test-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def remove_when_closed(storage, image: str, timeout: float = 60) -> None:
    """Remove an image QEMU may still hold for a moment after its domain stopped (its watch lingers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return storage.cluster.remove("rbd", image)
        except errors.BusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_hook_status_reports_the_installation(installed_hook, lab):
    result = virtrbd("hook", "status", "--json", env=lab.env)
    status = json.loads(result.out)
    assert result.code == 0 and status["installed"]
    assert status["config"] == str(lab.conf_path)


def test_hook_install_refuses_a_config_without_keyring(tmp_path, lab):
    conf = tmp_path / "nokeyring.conf"
    conf.write_text(f"[ceph]\nmonitors = 127.0.0.1\n[libvirt]\nsecret_uuid = {lab.config.libvirt.secret_uuid}\n")
    with pytest.raises(errors.ConfigError, match="keyring"):
        hook_install.install(conf, tmp_path / "hooks")
    assert not (tmp_path / "hooks" / "qemu.d" / "virtrbd").exists()
