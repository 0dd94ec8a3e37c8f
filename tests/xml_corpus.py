"""A corpus of libvirt documents for rbd, written here: the shapes libvirt's schemas allow.

Each entry is (name, kind, text).  The disks cross their independent choices
(hosts, where auth sits, snapshot, config file, encryption, tuning), so every
shape meets every other; pools, volumes and secrets vary the same way on a
smaller scale.  ``EXTENDED`` holds documents with elements and attributes from
other namespaces: libvirt's schemas do not describe them, virtrbd keeps them.
"""

from __future__ import annotations

import itertools

UUID = "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"
LUKS = "5f1e5a9e-93a4-4b6c-9c6c-0a9d8e7f6a51"

_HOSTS = {
    "hostless": "",
    "ipv4": "<host name='192.0.2.10' port='3300'/>",
    "ipv6-named": "<host name='2001:db8::1' port='6789'/><host name='mon2.example.org'/>",
    "five": "".join(f"<host name='192.0.2.{n}' port='{3300 + n}'/>" for n in range(1, 6)),
}
_AUTH = f"<auth username='virt'><secret type='ceph' uuid='{UUID}'/></auth>"
_AUTH_USAGE = "<auth username='hv01'><secret type='ceph' usage='ceph-vms client.hv01'/></auth>"
_AUTH_PLACES = ("none", "before-source", "after-source", "in-source")
_SNAPSHOTS = {
    "image": ("rbd/vm1", "", ""),
    "snapshot-readonly": ("rbd/golden", "<snapshot name='base'/>", "<readonly/>"),
    "snapshot-writable-by-libvirt": ("rbd/golden", "<snapshot name='base'/>", ""),
    "legacy-at": ("vms/golden@base", "", "<readonly/>"),
}
_ENCRYPTION = {
    "plain": ("", ""),
    "luks-beside": ("", f"<encryption format='luks'><secret type='passphrase' uuid='{LUKS}'/></encryption>"),
    "luks-qemu-in-source": (f"<encryption format='luks' engine='qemu'><secret type='passphrase' uuid='{LUKS}'/>"
                            f"</encryption>", ""),
    "luks2-librbd": ("<encryption format='luks2' engine='librbd'><secret type='passphrase' usage='vm1 luks'/>"
                     "</encryption>", ""),
}
_CONFIG = {"": "", "config": "<config file='/etc/ceph/ceph.conf'/>"}
_TUNING = [
    "",
    "<serial>disk-1</serial><iotune><total_iops_sec>500</total_iops_sec><read_bytes_sec>1048576</read_bytes_sec>"
    "</iotune>",
    "<boot order='1'/><alias name='ua-data'/><address type='pci' domain='0x0000' bus='0x00' slot='0x07' "
    "function='0x0'/>",
]
_DRIVERS = ["<driver name='qemu' type='raw'/>", "<driver name='qemu' type='raw' cache='none' io='native' "
            "discard='unmap' detect_zeroes='unmap'/>", ""]


def disk(target: str, hosts: str, auth: str, snapshot: str, encryption: str, config: str, tuning: str = "",
         driver: str = "<driver name='qemu' type='raw'/>", bus: str = "virtio") -> str:
    name, snapshot_node, readonly = _SNAPSHOTS[snapshot]
    in_source, beside = _ENCRYPTION[encryption]
    auth_node = _AUTH_USAGE if auth == "in-source" else _AUTH
    source = (f"<source protocol='rbd' name='{name}'>{_HOSTS[hosts]}{snapshot_node}{_CONFIG[config]}"
              f"{auth_node if auth == 'in-source' else ''}{in_source}</source>")
    before = auth_node if auth == "before-source" else ""
    after = auth_node if auth == "after-source" else ""
    return (f"<disk type='network' device='disk'>{driver}{before}{source}{after}<target dev='{target}' bus='{bus}'/>"
            f"{readonly}{beside}{tuning}</disk>")


def targets():
    """vda … vdz, vdaa …: as many device names as a corpus needs."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    for length in (1, 2):
        for tail in itertools.product(letters, repeat=length):
            yield "vd" + "".join(tail)


def disks() -> list[tuple[str, str]]:
    """(name, document) for every combination of the disk's independent choices."""
    names = targets()
    corpus = []
    for n, (hosts, auth, snapshot, encryption, config) in enumerate(
            itertools.product(_HOSTS, _AUTH_PLACES, _SNAPSHOTS, _ENCRYPTION, _CONFIG)):
        shape = "-".join(filter(None, (hosts, auth, snapshot, encryption, config)))
        corpus.append((shape, disk(next(names), hosts, auth, snapshot, encryption, config,
                                   _TUNING[n % len(_TUNING)], _DRIVERS[n % len(_DRIVERS)])))
    return corpus


_RBD_NS = "xmlns:rbd='http://libvirt.org/schemas/storagepool/rbd/1.0'"


def pools() -> list[tuple[str, str]]:
    corpus = []
    refreshes = ("", "<refresh/>", "<refresh><volume/></refresh>", "<refresh><volume allocation='default'/></refresh>",
                 "<refresh><volume allocation='capacity'/></refresh>")
    auths = ("", f"<auth type='ceph' username='virt'><secret uuid='{UUID}'/></auth>",
             "<auth username='hv01' type='ceph'><secret usage='ceph-vms client.hv01'/></auth>")
    opts = ("", "<rbd:config_opts/>", "<rbd:config_opts><rbd:option name='client_mount_timeout' value='10'/>"
                                      "<rbd:option name='rbd_cache' value='false'/></rbd:config_opts>")
    hosts = (_HOSTS["ipv4"], _HOSTS["ipv6-named"], _HOSTS["five"])
    for n, (refresh, auth, opt) in enumerate(itertools.product(refreshes, auths, opts)):
        uuid = f"<uuid>{UUID}</uuid>" if n % 2 else ""
        sizing = ("<capacity unit='bytes'>8589934592</capacity><allocation unit='bytes'>0</allocation>"
                  "<available unit='bytes'>8589934592</available>") if n % 3 == 0 else ""
        auth_first = n % 4 == 0
        source = (f"<source>{auth if auth_first else ''}<name>rbd</name>{hosts[n % 3]}"
                  f"{'' if auth_first else auth}</source>")
        corpus.append((f"pool-{n}", f"<pool type='rbd' {_RBD_NS if opt else ''}><name>ceph-{n}</name>{uuid}{sizing}"
                                    f"{source}{refresh}{opt}</pool>"))
    return corpus


def volumes() -> list[tuple[str, str]]:
    shapes = [
        "<volume><name>v1</name><capacity>1073741824</capacity><target/></volume>",
        "<volume type='network'><name>v2</name><key>rbd/v2</key><capacity unit='bytes'>3145728</capacity>"
        "<allocation unit='bytes'>4194304</allocation><target><path>rbd/v2</path><format type='raw'/></target>"
        "</volume>",
        "<volume><name>v3</name><capacity unit='G'>20</capacity><allocation unit='bytes'>0</allocation>"
        "<target><format type='raw'/><permissions><mode>0600</mode></permissions></target></volume>",
        "<volume><name>v4</name><capacity unit='KB'>1000</capacity><target><format type='raw'/></target></volume>",
        "<volume><name>v5</name><capacity unit='TiB'>1</capacity><allocation unit='MiB'>4</allocation>"
        "<target><format type='raw'/></target></volume>",
        "<volume><name>v6</name><capacity unit='b'>512</capacity><target><format type='raw'/></target></volume>",
    ]
    return [(f"volume-{n}", text) for n, text in enumerate(shapes)]


def secrets() -> list[tuple[str, str]]:
    shapes = []
    for n, (ephemeral, private, description) in enumerate(itertools.product(
            ("", "ephemeral='no'", "ephemeral='yes'"), ("", "private='yes'", "private='no'"),
            ("", "<description>cephx key of hv01</description>"))):
        uuid = f"<uuid>{UUID}</uuid>" if n % 2 == 0 else ""
        shapes.append((f"secret-{n}", f"<secret {ephemeral} {private}>{uuid}{description}"
                                      f"<usage type='ceph'><name>ceph-vms client.hv{n}</name></usage></secret>"))
    return shapes


CORPUS = ([(name, "disk", text) for name, text in disks()] + [(name, "pool", text) for name, text in pools()]
          + [(name, "volume", text) for name, text in volumes()] + [(name, "secret", text) for name, text in secrets()])

#: documents with extension elements and attributes of other namespaces
EXTENDED = [
    ("disk-ext", "disk", "<disk type='network' device='disk' xmlns:x='urn:example:ops' x:owner='team-a'>"
                         "<source protocol='rbd' name='rbd/vm1'><host name='192.0.2.10'/><x:hint level='2'/></source>"
                         "<target dev='vda'/><x:note>kept</x:note></disk>"),
    ("pool-ext", "pool", f"<pool type='rbd' {_RBD_NS} xmlns:x='urn:example:ops'><name>p</name><source><name>rbd</name>"
                         f"{_HOSTS['ipv4']}</source><x:owner>team-a</x:owner></pool>"),
    ("volume-ext", "volume", "<volume xmlns:x='urn:example:ops'><name>v</name><capacity>1024</capacity>"
                             "<x:tier>gold</x:tier></volume>"),
    ("secret-ext", "secret", "<secret xmlns:x='urn:example:ops' x:rotated='2026-01-01'><usage type='ceph'>"
                             "<name>c</name></usage><x:owner/></secret>"),
]
