"""A domain's disk on an RBD image: ``<disk type='network' device='disk'>`` with ``protocol='rbd'``.

QEMU opens the image itself (``-blockdev driver=rbd``) with the monitors and the
libvirt secret named here, so a disk never needs libvirt's rbd pool, let alone a
pool refresh.

Reading is lossless and accepts what libvirt accepts: a disk without ``<host>``
(librbd then takes the monitors from ceph.conf or ``<config file>``), a disk on
a snapshot without ``<readonly/>``.  A disk read from a document renders into a
copy of that document, so whatever virtrbd does not model stays as it was.
What virtrbd itself builds follows its policy instead (``libvirt.policy``):
monitors named, a disk on a snapshot read-only.

Optional tuning (``bus``, ``cache``, ``discard``, ``io``, ``iotune``) left at
``None`` / empty keeps whatever the template says, so an operator's template can
set site-wide defaults (``cache='writeback'``) and a model only overrides them.
With the shipped template, which sets none of them, model → XML → model is the
identity for every disk.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from ..errors import InvalidSpecError, InvalidXMLError
from ..monitor import Monitor
from ..spec import ImageSpec
from . import encryption, nodes, safe, templates
from .choices import BUSES, CACHE_MODES, DISCARD_MODES, IO_MODES
from .common import SecretRef, check_choice, fill_host, read_hosts
from .encryption import Encryption

_LIMITS = ("bytes_sec", "iops_sec", "bytes_sec_max", "iops_sec_max", "bytes_sec_max_length", "iops_sec_max_length")
#: every numeric ``<iotune>`` element, in the order they are written
IOTUNE_NAMES = tuple(f"{side}_{limit}" for limit in _LIMITS for side in ("total", "read", "write")) + ("size_iops_sec",)

_TARGET = re.compile(r"^(hd|sd|vd|xvd|ubd)[a-zA-Z0-9_]+$")
# libvirt's diskSerial, without spaces at either end: they would not survive reading the XML back
_SERIAL = re.compile(r"^[A-Za-z0-9_.+-](?:[A-Za-z0-9_.+\- ]{0,62}[A-Za-z0-9_.+-])?$")


@dataclass(frozen=True)
class DiskDef:
    image: ImageSpec                        # POOL/IMAGE, with @SNAP for a read-only snapshot disk
    target: str                             # the guest's device name: vda, sdb, …
    monitors: tuple[Monitor, ...]
    auth_username: str | None = None        # cephx user without 'client.'
    secret: SecretRef | None = None
    bus: str | None = None                  # None: the template's, else libvirt derives it from the target
    cache: str | None = None
    discard: str | None = None
    io: str | None = None
    read_only: bool = False
    serial: str | None = None
    iotune: tuple[tuple[str, int], ...] = ()   # e.g. (("total_iops_sec", 500),)
    config_file: str | None = None          # <config file>: the ceph.conf librbd reads for this disk
    encryption: Encryption | None = None    # LUKS on the image: the guest must never see it without this
    #: the document this was read from: rendering fills the typed fields into a copy of it
    origin: etree._Element | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.image, ImageSpec):
            raise ValueError(f"disk image {self.image!r} is not an ImageSpec (POOL/IMAGE[@SNAP])")
        if not _TARGET.match(self.target or ""):
            raise ValueError(f"target {self.target!r} is not a disk device name (vda, sdb, hdc, …)")
        object.__setattr__(self, "monitors", tuple(self.monitors))
        if (self.auth_username is None) != (self.secret is None):
            raise ValueError("auth needs both a username and a secret")
        check_choice("bus", self.bus, BUSES)
        check_choice("cache mode", self.cache, CACHE_MODES)
        check_choice("discard mode", self.discard, DISCARD_MODES)
        check_choice("io mode", self.io, IO_MODES)
        if self.config_file is not None and not self.config_file.startswith("/"):
            raise ValueError(f"config file {self.config_file!r} is not an absolute path")
        if self.encryption is not None and not isinstance(self.encryption, Encryption):
            raise ValueError(f"encryption {self.encryption!r} is not an Encryption")
        if self.serial is not None and not _SERIAL.match(self.serial):
            raise ValueError(f"serial {self.serial!r}: use letters, digits, inner spaces, '_', '.', '+', '-' "
                             f"(at most 64)")
        object.__setattr__(self, "iotune", _checked_iotune(self.iotune))

    # --- rendering ---------------------------------------------------------------------

    def to_element(self, template_dir: Path | None = None) -> etree._Element:
        root, complete = templates.starting_point("disk", self, template_dir)
        if complete:
            return root
        nodes.put_attr(root, ".", "type", "network")
        nodes.put_attr(root, ".", "device", "disk")
        nodes.put_attr(root, "driver", "name", "qemu")
        nodes.put_attr(root, "driver", "type", "raw")
        _override_attr(root, "driver", "cache", self.cache)
        _override_attr(root, "driver", "discard", self.discard)
        _override_attr(root, "driver", "io", self.io)
        nodes.put_attr(root, "source", "protocol", "rbd")
        nodes.put_attr(root, "source", "name", str(self.image.image_spec))
        nodes.repeat(root, "source/host", self.monitors, fill_host)
        if self.image.snapshot is None:
            nodes.remove(root, "source/snapshot")
        else:
            nodes.put_attr(root, "source/snapshot", "name", self.image.snapshot)
        nodes.put_attr(root, "source/config", "file", self.config_file)
        nodes.remove_if_empty(root, "source/config")
        self._fill_auth(root)
        self._fill_encryption(root)
        nodes.put_attr(root, "target", "dev", self.target)
        _override_attr(root, "target", "bus", self.bus)
        if self.read_only:
            nodes.ensure(root, "readonly")
        else:
            nodes.remove(root, "readonly")
        nodes.put_text(root, "serial", self.serial)
        if self.iotune:
            nodes.remove(root, "iotune")
            for name, value in self.iotune:
                nodes.put_text(root, f"iotune/{name}", value)
        nodes.remove_if_empty(root, "iotune")
        return root

    def _fill_auth(self, root: etree._Element) -> None:
        """``<auth>`` where the template has it: beside ``<source>`` (classic) or inside it."""
        where = "source/auth" if root.find("source/auth") is not None else "auth"
        if self.secret is None:
            nodes.remove(root, "auth")
            nodes.remove(root, "source/auth")
            return
        nodes.put_attr(root, where, "username", self.auth_username)
        secret = nodes.ensure(root, f"{where}/secret")
        secret.set("type", "ceph")
        self.secret.fill(secret)

    def _fill_encryption(self, root: etree._Element) -> None:
        """``<encryption>`` where the document has it, else inside ``<source>``, as libvirt writes it now."""
        node = encryption.find(root)
        if self.encryption is None:
            if node is not None:
                node.getparent().remove(node)
            return
        if node is None:
            node = nodes.ensure(root, "source/encryption")
        self.encryption.fill(node)

    def to_xml(self, template_dir: Path | None = None) -> str:
        return safe.tostring(self.to_element(template_dir))

    # --- parsing -------------------------------------------------------------------------

    @classmethod
    def from_element(cls, root: etree._Element) -> DiskDef:
        """A virtrbd disk, or one of libvirt's own (``virsh dumpxml``: alias, address… are kept, not read).

        Refused, in one line: what is not an rbd network disk of raw data with a
        POOL/IMAGE name, or a field that libvirt itself would refuse.
        """
        if root.tag != "disk":
            raise InvalidXMLError(f"expected a <disk> document, got <{root.tag}>")
        target = nodes.attr(root, "target", "dev")
        what = f"disk {target}" if target else "disk"
        source = root.find("source")
        if root.get("type") != "network" or source is None or source.get("protocol") != "rbd":
            raise InvalidXMLError(f"{what}: not an rbd network disk (type='network', source protocol='rbd')")
        if root.get("device", "disk") != "disk":
            raise InvalidXMLError(f"{what}: device {root.get('device')!r} is not 'disk'")
        driver_type = nodes.attr(root, "driver", "type")
        if driver_type not in (None, "raw"):
            raise InvalidXMLError(f"{what}: driver type {driver_type!r}: virtrbd handles raw rbd disks only")
        image = _read_image(source, what)
        auth = root.find("auth")
        if auth is None:
            auth = source.find("auth")
        secret = _read_secret(auth, what)
        try:
            return cls(image=image, target=target or "", monitors=read_hosts(source, what),
                       auth_username=None if auth is None else auth.get("username"), secret=secret,
                       bus=nodes.attr(root, "target", "bus"), cache=nodes.attr(root, "driver", "cache"),
                       discard=nodes.attr(root, "driver", "discard"), io=nodes.attr(root, "driver", "io"),
                       read_only=root.find("readonly") is not None, serial=nodes.text(root, "serial"),
                       iotune=_read_iotune(root, what), config_file=nodes.attr(source, "config", "file"),
                       encryption=Encryption.read(encryption.find(root), what), origin=copy.deepcopy(root))
        except ValueError as exc:
            raise InvalidXMLError(f"{what}: {exc}") from None

    @classmethod
    def from_xml(cls, text: str | bytes) -> DiskDef:
        return cls.from_element(safe.parse(text, what="disk XML"))


def is_rbd_disk(disk: etree._Element) -> bool:
    """A ``<disk>`` whose data is an rbd image (of any device: disk, cdrom, lun)."""
    source = disk.find("source")
    return disk.get("type") == "network" and source is not None and source.get("protocol") == "rbd"


def _override_attr(root: etree._Element, path: str, name: str, value: str | None) -> None:
    """Set an attribute when the model has a value; otherwise the template's stays."""
    if value is not None:
        nodes.put_attr(root, path, name, value)


def _read_image(source: etree._Element, what: str) -> ImageSpec:
    """``name='POOL/IMAGE'`` plus ``<snapshot name>``, or libvirt's older ``name='POOL/IMAGE@SNAP'``."""
    name = source.get("name") or ""
    snapshot = nodes.attr(source, "snapshot", "name")
    if "/" not in name:
        raise InvalidXMLError(f"{what}: source name {name!r} is not POOL/IMAGE")
    try:
        image = ImageSpec.parse(name)
        if snapshot is not None:
            if image.snapshot is not None:
                raise InvalidXMLError(f"{what}: a snapshot both in the source name and in <snapshot>")
            image = image.at(snapshot)
    except InvalidSpecError as exc:
        raise InvalidXMLError(f"{what}: {exc}") from None
    return image


def _read_secret(auth: etree._Element | None, what: str) -> SecretRef | None:
    if auth is None:
        return None
    node = auth.find("secret")
    if node is None:
        raise InvalidXMLError(f"{what}: <auth> without <secret>")
    if node.get("type") != "ceph":
        raise InvalidXMLError(f"{what}: auth secret type {node.get('type')!r} is not 'ceph'")
    return SecretRef.read(node, what)


def _read_iotune(root: etree._Element, what: str) -> tuple[tuple[str, int], ...]:
    limits = []
    for node in root.iterfind("iotune/*"):
        if node.tag in IOTUNE_NAMES:
            text = (node.text or "").strip()
            if not (text.isascii() and text.isdigit()):
                raise InvalidXMLError(f"{what}: iotune {node.tag} {text!r} is not a whole number")
            limits.append((node.tag, int(text)))
    return tuple(limits)


def _checked_iotune(limits) -> tuple[tuple[str, int], ...]:
    """Known names, whole non-negative values, no total beside its read/write split; canonical order."""
    given = dict(limits)
    if len(given) != len(tuple(limits)):
        raise ValueError("an iotune limit is given twice")
    for name, value in given.items():
        if name not in IOTUNE_NAMES:
            raise ValueError(f"unknown iotune limit {name!r} (known: {', '.join(IOTUNE_NAMES)})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"iotune {name} {value!r} is not a whole number >= 0")
    for limit in _LIMITS:
        if f"total_{limit}" in given and ({f"read_{limit}", f"write_{limit}"} & given.keys()):
            raise ValueError(f"iotune total_{limit} excludes read_{limit} and write_{limit}")
    return tuple((name, given[name]) for name in IOTUNE_NAMES if name in given)
