"""The documents of ``virtrbd xml`` against the lab's real libvirtd: piped into virsh, applied
with ``--define`` (twice: the second time changes nothing), and a domain that boots from a disk
virtrbd wrote, with QEMU reading the RBD image.

Secrets and pools are made under unique names from a copy of the lab's config (a new secret
UUID, a new libvirt pool on the same Ceph pool), so the lab's own objects are never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import subprocess
import sys
import time
import uuid

import libvirt
import pytest

from virtrbd.libvirt import policy
from virtrbd.libvirt.host import Host
from virtrbd.spec import ImageSpec
from virtrbd.xml import safe
from virtrbd.xml.disk import DiskDef
from virtrbd.xml.domain_disks import rbd_disks
from virtrbd.xml.pool import PoolDef
from virtrbd.xml.secret import SecretDef

from ..cli_helpers import virtrbd

BOOT_SECTOR = b"\xeb\xfe" + bytes(508) + b"\x55\xaa"     # "jmp $" and the signature SeaBIOS looks for


@pytest.fixture
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"pool": f"virtrbd-test-{tag}", "domain": f"virtrbd-test-{tag}", "secret_uuid": str(uuid.uuid4())}


@pytest.fixture
def own_env(lab, names, tmp_path) -> dict[str, str]:
    """A copy of the lab's config naming a secret and a libvirt pool of this test's own; removed afterwards."""
    ceph = lab.config.ceph
    path = tmp_path / "virtrbd.conf"
    path.write_text(f"[ceph]\nmonitors = {', '.join(map(str, ceph.monitors))}\nclient_id = {ceph.client_id}\n"
                    f"keyring = {ceph.keyring}\npool = {ceph.pool}\n\n[libvirt]\nuri = {lab.config.libvirt.uri}\n"
                    f"secret_uuid = {names['secret_uuid']}\npool = {names['pool']}\n")
    yield {"VIRTRBD_CONF": str(path)}
    with Host(lab.config.libvirt.uri) as host:
        _remove_domain(host, names["domain"])
        host.remove_pool(names["pool"])
        host.remove_secret(SecretDef("unused", uuid=names["secret_uuid"]))


def pipe(env: dict[str, str], xml_args: list[str], virsh_args: list[str]) -> str:
    """``virtrbd xml … | virsh …`` in a real shell pipeline; both sides must succeed."""
    command = (f"{shlex.quote(sys.executable)} -m virtrbd xml {shlex.join(xml_args)} "
               f"| virsh -c qemu:///system {shlex.join(virsh_args)}")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done
    return done.stdout


def _remove_domain(host: Host, name: str) -> None:
    domain = host.find_domain(name)
    if domain is not None:
        if domain.isActive():
            domain.destroy()
        domain.undefine()


@contextlib.contextmanager
def scratch_domain(lab, name: str, disks: list[str] = ()):
    """A minimal domain (64 MiB, no OS, boots from its first disk), destroyed and undefined afterwards."""
    domain_type = lab.state["libvirt"]["domain_type"]
    xml = (f"<domain type='{domain_type}'><name>{name}</name><memory unit='MiB'>64</memory>"
           f"<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
           f"<devices>{''.join(disks)}</devices></domain>")
    with Host(lab.config.libvirt.uri) as host:
        domain = host.conn.defineXML(xml)
        try:
            yield domain
        finally:
            _remove_domain(host, name)


def wait_for_reads(domain_name: str, timeout: float = 30) -> int:
    """rd_req of vda as ``virsh domblkstat`` reports it, once it is above zero."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["virsh", "domblkstat", domain_name, "vda"], capture_output=True, text=True, check=True)
        stats = dict(line.split()[1:3] for line in done.stdout.splitlines() if line.strip())
        if int(stats["rd_req"]) > 0 or time.monotonic() > deadline:
            return int(stats["rd_req"])
        time.sleep(0.2)


def test_virsh_defines_the_secret_pool_and_volume_virtrbd_prints(lab, own_env, names, storage, image_name):
    pipe(own_env, ["secret", "--validate"], ["secret-define", "/dev/stdin"])
    defined = virtrbd("xml", "secret", "--define", env=own_env)  # virsh defined it; this sets its value
    assert defined.code == 0 and defined.out.endswith(": unchanged; value set again from [ceph] keyring\n"), defined
    pipe(own_env, ["pool", "--validate"], ["pool-define", "/dev/stdin"])
    subprocess.run(["virsh", "pool-start", names["pool"]], check=True, capture_output=True)
    pipe(own_env, ["volume", "--image", image_name, "--size", "24M", "--validate"],
         ["vol-create", names["pool"], "/dev/stdin"])

    assert storage.image_size(image_name) == 24 << 20
    with Host(lab.config.libvirt.uri) as host:
        secret = SecretDef.from_xml(host.conn.secretLookupByUUIDString(names["secret_uuid"]).XMLDesc(0))
        assert secret.usage_name == f"{names['pool']} client.virt"
        pool = host.find_pool(names["pool"])
        assert pool.isActive()
        assert PoolDef.from_xml(pool.XMLDesc(0)).monitors == lab.config.ceph.monitors
        assert host.find_volume(names["pool"], image_name).info()[1] == 24 << 20


def boot_and_count_reads(lab, storage, image_name: str, domain_name: str, env: dict[str, str]) -> DiskDef:
    storage.create_image(image_name, 8 << 20)
    with storage.cluster.image(storage.config.ceph.pool, image_name) as image:
        image.write(BOOT_SECTOR, 0)
    with scratch_domain(lab, domain_name) as domain:
        pipe(env, ["disk", "--image", f"rbd/{image_name}", "--target", "vda", "--validate"],
             ["attach-device", domain_name, "/dev/stdin", "--config"])
        [disk] = rbd_disks(safe.parse(domain.XMLDesc(0)))
        domain.create()
        assert wait_for_reads(domain_name) > 0, "QEMU did not read the RBD image"
    return disk


def test_a_domain_boots_from_the_disk_virtrbd_wrote(lab, storage, image_name, names):
    disk = boot_and_count_reads(lab, storage, image_name, names["domain"], lab.env)
    assert disk.image == ImageSpec("rbd", image_name)
    assert disk.secret.uuid == lab.config.libvirt.secret_uuid


def test_a_disk_referencing_the_secret_by_usage_boots_too(lab, storage, image_name, names, tmp_path):
    """Without [libvirt] secret_uuid the disk names the secret by usage: the lab's ``virtrbd-lab client.virt``."""
    conf = tmp_path / "by-usage.conf"
    conf.write_text("\n".join(line for line in lab.conf_path.read_text().splitlines()
                              if not line.startswith("secret_uuid")) + "\n")
    disk = boot_and_count_reads(lab, storage, image_name, names["domain"], {"VIRTRBD_CONF": str(conf)})
    assert disk.secret.uuid is None and disk.secret.usage == lab.state["libvirt"]["secret_usage"]


def libvirt_state(lab, names: dict[str, str], image: str) -> dict:
    with Host(lab.config.libvirt.uri) as host:
        pool = host.find_pool(names["pool"])
        volume = host.find_volume(names["pool"], image)
        domain = host.find_domain(names["domain"])
        return {
            "secret": host.conn.secretLookupByUUIDString(names["secret_uuid"]).XMLDesc(0),
            "secrets": sorted(s.UUIDString() for s in host.conn.listAllSecrets(0)),
            "pool": (pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE), pool.isActive(), pool.autostart()),
            "pools": sorted(p.name() for p in host.conn.listAllStoragePools(0)),
            "volume": volume.info()[1],
            "domain": domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
        }


def test_define_twice_changes_nothing(lab, own_env, names, image_name, storage):
    commands = [["secret", "--define"], ["pool", "--define"],
                ["volume", "--image", image_name, "--size", "16M", "--define"],
                ["disk", "--image", f"rbd/{image_name}", "--target", "vdb", "--define", "--domain", names["domain"]]]
    with scratch_domain(lab, names["domain"]):
        first = [virtrbd("xml", *args, env=own_env) for args in commands]
        assert [r.code for r in first] == [0, 0, 0, 0], first
        assert [r.out.split(": ")[-1].strip() for r in first] == [
            "defined, value set", "defined, started, autostart on", "created", "attached"]
        before = libvirt_state(lab, names, image_name)

        second = [virtrbd("xml", *args, env=own_env) for args in commands]
        assert [r.code for r in second] == [0, 0, 0, 0], second
        assert all(": unchanged" in r.out for r in second), second
        assert libvirt_state(lab, names, image_name) == before
    assert storage.image_size(image_name) == 16 << 20


def test_lab_objects_read_back_as_what_virtrbd_would_write(lab):
    """libvirt's dump of the lab's pool is the pool virtrbd.conf describes (the lab defined it with the same policy)."""
    with Host(lab.config.libvirt.uri) as host:
        dumped = PoolDef.from_xml(host.find_pool(lab.libvirt_pool).XMLDesc(0))
    assert dataclasses.replace(dumped, uuid=None) == policy.pool_def(lab.config)
