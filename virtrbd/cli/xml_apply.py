"""The work behind ``virtrbd xml``: build or read the document, check it, print it or apply it.

Kept apart from the argument parser (``xml_cmd``) so that every other command
starts without importing lxml and the libvirt side.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from lxml import etree

from .. import config as config_module
from ..config import Config
from ..errors import InvalidSpecError, InvalidXMLError, UsageError
from ..libvirt import policy
from ..libvirt.host import Host
from ..spec import ImageSpec
from ..storage import Storage
from ..xml import clone_markup, safe, schema
from ..xml.clone_markup import CloneMarkup
from ..xml.disk import DiskDef, is_rbd_disk
from ..xml.domain_disks import ForeignDisk, rbd_disks, read_disk
from ..xml.pool import PoolDef
from ..xml.secret import SecretDef
from ..xml.volume import VolumeDef

MODELS = {"secret": SecretDef, "pool": PoolDef, "volume": VolumeDef, "disk": DiskDef}

log = logging.getLogger(__name__)


# --- the command ---------------------------------------------------------------------------

def run(args) -> int:
    if getattr(args, "domain", None) and not args.define:
        raise UsageError("xml disk: --domain is for --define (to print, pipe into virsh attach-device DOMAIN)")
    config = _config(args)
    model = _read_document(args) if args.from_file else _build(args, config)
    if isinstance(model, ForeignDisk):
        model = _foreign(args, model)
    markup = _clone_markup(args, model, config)
    element = model.to_element(config.xml.templates)
    if args.validate:
        schema.validate(element, args.xml_kind)
    if not args.define:
        sys.stdout.write(safe.tostring(_fragment(element, markup) if markup else element))
        return 0
    _check_define(args, config)
    print(_apply(args, config, model, markup))
    return 0


def _foreign(args, disk: ForeignDisk) -> ForeignDisk:
    """A disk virtrbd does not act on prints as it was read, with a warning; acting on it is refused."""
    if args.define or getattr(args, "clone_of", None):
        raise InvalidXMLError(f"{disk.what}: {disk.reason}; virtrbd does not act on it")
    log.warning("%s: %s; printed as it was read", disk.what, disk.reason)
    return disk


def _clone_markup(args, model, config: Config) -> CloneMarkup | None:
    """virtrbd's markup for a disk that the hook makes as a clone (--clone-of), checked up front."""
    clone_of = getattr(args, "clone_of", None)
    if clone_of is None:
        if getattr(args, "ephemeral", False) or getattr(args, "clone_size", None):
            raise UsageError("xml disk: --ephemeral and --clone-size go with --clone-of")
        return None
    if model.image.snapshot is not None or model.read_only:
        raise UsageError(f"xml disk: {model.image} would be a read-only disk; a clone is a writable image")
    try:
        return CloneMarkup(model.target, ImageSpec.parse(clone_of, config.ceph.pool), args.ephemeral,
                           args.clone_size)
    except ValueError as exc:
        raise UsageError(f"xml disk: --clone-of: {exc}") from None


def _fragment(disk: etree._Element, markup: CloneMarkup) -> etree._Element:
    """``<domain><metadata>…</metadata><devices><disk/></devices></domain>``: what to merge into a domain."""
    domain = etree.Element("domain")
    etree.SubElement(domain, "metadata").append(clone_markup.render([markup]))
    etree.SubElement(domain, "devices").append(disk)
    return domain


def _config(args) -> Config:
    """virtrbd.conf with this command's overrides (--monitors, --templates) folded in."""
    config = config_module.load(args.config)
    if getattr(args, "monitors", None):
        config = dataclasses.replace(config, ceph=dataclasses.replace(config.ceph, monitors=args.monitors))
    if args.templates:
        config = dataclasses.replace(config, xml=dataclasses.replace(config.xml, templates=args.templates))
    return config


def _build(args, config: Config):
    """The document from the options and the config; a bad value is a one-line usage error."""
    kind = args.xml_kind
    try:
        if kind == "secret":
            return policy.secret_def(config)
        if kind == "pool":
            return policy.pool_def(config)
        if kind == "volume":
            _require(args, "image", "size")
            return VolumeDef(_image(args, config, allow_snapshot=False).image, args.size)
        _require(args, "image", "target")
        tuning = dict(bus=args.bus, cache=args.cache, discard=args.discard, io=args.io, serial=args.serial,
                      iotune=tuple(args.iotune or ()))
        return policy.disk_def(config, _image(args, config, allow_snapshot=True), args.target,
                                   read_only=args.read_only, **tuning)
    except ValueError as exc:
        raise UsageError(f"xml {kind}: {exc}") from None


def _image(args, config: Config, *, allow_snapshot: bool) -> ImageSpec:
    spec = ImageSpec.parse(args.image, config.ceph.pool)
    if not allow_snapshot and spec.snapshot is not None:
        raise InvalidSpecError(f"{spec}: name an image here, not a snapshot")
    return spec


def _require(args, *names: str) -> None:
    for name in names:
        if getattr(args, name) is None:
            raise UsageError(f"xml {args.xml_kind}: --{name} is required (or give the document with --from FILE)")


# Options that build a document, refused beside --from (which gives the whole document).
_BUILDING = {"pool": ("monitors",), "volume": ("image", "size"),
             "disk": ("image", "bus", "cache", "discard", "io", "serial", "iotune", "read_only", "monitors")}


def _read_document(args):
    """The document in --from FILE, through the hardened parser (no entities, bounded size)."""
    kind = args.xml_kind
    for name in _BUILDING.get(kind, ()):
        if getattr(args, name):
            raise UsageError(f"xml {kind}: --from gives the whole document; drop --{name.replace('_', '-')}")
    if args.from_file == "-":
        root = safe.parse_stream(sys.stdin.buffer, what="stdin")
    else:
        root = safe.parse_file(args.from_file)
    if kind == "disk" and root.tag == "domain":
        return _pick_disk(rbd_disks(root), args.target)
    if kind == "disk" and root.tag == "disk" and is_rbd_disk(root):
        model = read_disk(root)
    else:
        model = MODELS[kind].from_element(root)
    if kind == "disk" and args.target and model.target != args.target:
        raise InvalidXMLError(f"{args.from_file}: the disk's target is {model.target}, not {args.target}")
    return model


def _pick_disk(disks: list[DiskDef | ForeignDisk], target: str | None) -> DiskDef | ForeignDisk:
    """From a whole domain: the rbd disk at --target, or its only one (the others are never judged)."""
    if target:
        for disk in disks:
            if disk.target == target:
                return disk
        raise InvalidXMLError(f"the domain has no rbd disk at target {target}")
    if len(disks) != 1:
        targets = ", ".join(d.target or "?" for d in disks) or "none"
        raise UsageError(f"xml disk: the domain has {len(disks)} rbd disks ({targets}); choose one with --target")
    return disks[0]


def _check_define(args, config: Config) -> None:
    """What --define needs beyond the document, checked before anything is contacted."""
    if args.xml_kind == "disk" and not args.domain:
        raise UsageError("xml disk: --define needs --domain NAME")
    if args.xml_kind == "volume" and args.image:
        policy.volume_pool(config, _image(args, config, allow_snapshot=False))


def _apply(args, config: Config, model, markup: CloneMarkup | None = None) -> policy.Applied:
    kind = args.xml_kind
    if kind == "volume":
        with Storage(config) as storage, Host(config.libvirt.uri) as host:
            return policy.ensure_volume(host, storage.cluster, config, model)
    with Host(config.libvirt.uri) as host:
        if kind == "secret":
            return policy.ensure_secret(host, config, model)
        if kind == "pool":
            return policy.ensure_pool(host, config, model, autostart=not args.no_autostart)
        return policy.attach_disk(host, config, args.domain, model, markup)
