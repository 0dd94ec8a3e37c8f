"""What the libvirt patch tests use: the backend switch, volumes made through libvirt, clients of their own."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import libvirt
import rados
import rbd

from virtrbd.libvirt.host import Host
from virtrbd.xml.volume import VolumeDef


class Backends:
    def __init__(self, lab):
        self.lab = lab

    def use(self, patched: bool) -> None:
        self.lab.up(with_libvirt=True, libvirt_patched=patched)
        backend = self.lab.rbd_backend()
        assert backend["kind"] == ("patched" if patched else "system"), backend


class Volumes:
    def __init__(self, lab, storage):
        self.lab, self.storage = lab, storage
        self.made: list[str] = []

    def make(self, size: int, content: bytes | None = None) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        with Host(self.lab.config.libvirt.uri) as host:
            host.create_volume(self.lab.libvirt_pool, VolumeDef(name, size))
        self.made.append(name)
        if content:
            with self.storage.cluster.image(self.lab.config.ceph.pool, name) as image:
                image.write(content, 0)
        return name

    def known(self, name: str) -> None:
        """A volume libvirt made (vol-clone): removed after the test as well."""
        self.made.append(name)

    def read(self, name: str) -> bytes:
        with self.storage.cluster.image(self.lab.config.ceph.pool, name, read_only=True) as image:
            return image.read(0, image.size())

    def remove_all(self) -> None:
        for name in reversed(self.made):          # clones before their parents
            if self.storage.image_exists(name):
                self.storage.remove_image(name, with_snapshots=True, flatten_children=True)


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, LC_ALL="C"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(lab, name: str, snap: str = "s1") -> None:
    with rados_client(lab) as ioctx, rbd.Image(ioctx, name) as image:
        image.create_snap(snap)


@contextmanager
def rados_client(lab) -> Iterator[rados.Ioctx]:
    """The lab's hypervisor user straight through librados: a client of its own, like a VM's."""
    cluster = rados.Rados(rados_id=lab.config.ceph.client_id,
                          conf={"mon_host": str(lab.config.ceph.monitors[0]),
                                "keyring": str(lab.config.ceph.keyring)})
    cluster.connect(timeout=10)
    try:
        ioctx = cluster.open_ioctx(lab.config.ceph.pool)
        try:
            yield ioctx
        finally:
            ioctx.close()
    finally:
        cluster.shutdown()


#: listens for the pool's refresh events in a process of its own: a libvirt event loop in the test
#: process would also take over the streams of every later connection
REFRESH_LISTENER = """
import sys, libvirt
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open("qemu:///system")
pool = conn.storagePoolLookupByName(sys.argv[1])
done = []
conn.storagePoolEventRegisterAny(pool, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH,
                                 lambda *args: done.append(1), None)
print("ready", flush=True)
while not done:
    libvirt.virEventRunDefaultImpl()
print("refreshed", flush=True)
"""


@contextmanager
def refresh_events(lab) -> Iterator[Callable[[float], bool]]:
    """A wait(timeout) that is true once libvirtd reports a refresh of the lab's pool."""
    listener = subprocess.Popen([sys.executable, "-c", REFRESH_LISTENER, lab.libvirt_pool],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"

        def wait(timeout: float) -> bool:
            try:
                out, _ = listener.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return "refreshed" in out

        yield wait
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


@contextmanager
def reader_without_data_access(lab) -> Iterator[str]:
    """An rbd pool in libvirt for a cephx user that may open images but not read their data."""
    entity = f"client.t-noread-{uuid.uuid4().hex[:6]}"
    prefixes = ("rbd_id.", "rbd_header.", "rbd_object_map.", "rbd_directory", "rbd_info", "rbd_children",
                "rbd_trash")
    caps = ", ".join(f"allow rx pool=rbd object_prefix {p}" for p in prefixes)
    admin = rados.Rados(conffile=str(lab.lab.ceph_cluster().conf), rados_id="admin")
    admin.connect(timeout=10)
    ret, out, err = admin.mon_command(json.dumps({"prefix": "auth get-or-create", "entity": entity,
                                                  "caps": ["mon", "profile rbd", "osd", caps],
                                                  "format": "json"}), b"")
    assert ret == 0, err
    key = json.loads(out)[0]["key"]
    name = f"t-noread-{uuid.uuid4().hex[:6]}"
    secret_uuid = str(uuid.uuid4())
    conn = libvirt.open("qemu:///system")
    secret = conn.secretDefineXML(f"<secret ephemeral='yes' private='yes'><uuid>{secret_uuid}</uuid>"
                                  f"<usage type='ceph'><name>{name}</name></usage></secret>")
    secret.setValue(base64.b64decode(key))           # through the API, never on a command line
    monitor = lab.config.ceph.monitors[0]
    pool = conn.storagePoolCreateXML(
        f"<pool type='rbd'><name>{name}</name><source><name>rbd</name>"
        f"<host name='{monitor.host}' port='{monitor.port}'/>"
        f"<auth type='ceph' username='{entity.split('.', 1)[1]}'><secret uuid='{secret_uuid}'/></auth>"
        f"</source><refresh><volume allocation='capacity'/></refresh></pool>", 0)
    try:
        yield name
    finally:
        pool.destroy()
        secret.undefine()
        conn.close()
        admin.mon_command(json.dumps({"prefix": "auth del", "entity": entity}), b"")
        admin.shutdown()
