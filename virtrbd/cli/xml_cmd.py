"""``virtrbd xml secret|pool|volume|disk``: libvirt's documents for RBD, printed for virsh or applied.

Printed on stdout they pipe straight into virsh::

    virtrbd xml secret | virsh secret-define /dev/stdin
    virtrbd xml pool   | virsh pool-define /dev/stdin
    virtrbd xml volume --image disk1 --size 10G | virsh vol-create virtrbd-lab /dev/stdin
    virtrbd xml disk --image rbd/disk1 --target vdb | virsh attach-device vm1 /dev/stdin --config

``--define`` applies the same document through the libvirt API instead, idempotently (the
secret's value is set with virSecretSetValue from the keyring, never on a command line).
Every input — the options, virtrbd.conf, the templates, a ``--from`` document — is read and
checked before libvirt or Ceph is contacted, so a mistake changes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lxml import etree

from .. import config as config_module
from .. import hypervisor
from ..config import Config
from ..errors import InvalidSpecError, InvalidXMLError, UsageError
from ..libvirt_host import Host
from ..monitor import parse_monitors
from ..spec import ImageSpec
from ..storage import Storage
from ..xml import clone_markup, schema, safe
from ..xml.clone_markup import CloneMarkup
from ..xml.disk import BUSES, CACHE_MODES, DISCARD_MODES, IO_MODES, DiskDef, rbd_disks
from ..xml.pool import PoolDef
from ..xml.secret import SecretDef
from ..xml.volume import VolumeDef
from .common import size_arg

MODELS = {"secret": SecretDef, "pool": PoolDef, "volume": VolumeDef, "disk": DiskDef}


def add_parser(subparsers) -> None:
    xml = subparsers.add_parser(
        "xml", help="libvirt XML for the ceph secret, the rbd pool, volumes and disks (or --define them)",
        description="Print a libvirt document for virsh, or apply it with --define. Monitors, user and "
                    "secret come from virtrbd.conf; [xml] templates (or --templates) names your own skeletons.")
    kinds = xml.add_subparsers(dest="xml_kind", metavar="DOCUMENT", required=True)

    secret = kinds.add_parser("secret", help="the ceph secret (virsh secret-define); --define also sets its value")
    _common_options(secret, "defines the secret and sets its value from [ceph] keyring")

    pool = kinds.add_parser("pool", help="the rbd storage pool (virsh pool-define)")
    _common_options(pool, "defines, starts and autostarts the pool")
    _monitors_option(pool)
    pool.add_argument("--no-autostart", action="store_true", help="with --define: do not mark it autostart")

    volume = kinds.add_parser("volume", help="a raw volume of the rbd pool (virsh vol-create POOL)")
    _common_options(volume, "creates the image through libvirt's pool unless it exists with this size")
    volume.add_argument("--image", metavar="[POOL/]IMAGE", help="the image (pool: [ceph] pool)")
    volume.add_argument("--size", type=size_arg, help="its capacity, e.g. 10G")

    disk = kinds.add_parser("disk", help="a domain disk on an image (virsh attach-device --config)")
    _common_options(disk, "adds the disk to the persistent definition of --domain")
    disk.add_argument("--image", metavar="POOL/IMAGE[@SNAP]", help="the image; a snapshot makes a read-only disk")
    disk.add_argument("--target", metavar="DEV", help="the guest's device name, e.g. vda")
    disk.add_argument("--domain", metavar="NAME", help="with --define: the domain to attach the disk to")
    disk.add_argument("--bus", choices=BUSES, help="default: the template's, else libvirt's from the target name")
    disk.add_argument("--cache", choices=CACHE_MODES, help="default: the template's, else QEMU's")
    disk.add_argument("--discard", choices=DISCARD_MODES, help="unmap passes the guest's TRIM to the image")
    disk.add_argument("--io", choices=IO_MODES, help="QEMU's I/O mode")
    disk.add_argument("--serial", help="the serial number the guest sees")
    disk.add_argument("--iotune", type=_iotune_arg, action="append", metavar="NAME=VALUE",
                      help="a limit such as total_iops_sec=500 (repeatable)")
    disk.add_argument("--read-only", action="store_true", help="a read-only disk (implied by @SNAP)")
    disk.add_argument("--clone-of", metavar="POOL/IMAGE@SNAP",
                      help="the image is a clone of this golden snapshot, made by the qemu hook when the domain "
                           "starts; prints a domain fragment: <metadata> markup and the disk")
    disk.add_argument("--ephemeral", action="store_true",
                      help="with --clone-of: the hook removes the clone when the domain is released")
    disk.add_argument("--clone-size", type=size_arg, metavar="SIZE",
                      help="with --clone-of: grow the clone to SIZE when it is made")
    _monitors_option(disk)


def _common_options(parser: argparse.ArgumentParser, define_help: str) -> None:
    parser.add_argument("--define", action="store_true",
                        help=f"apply through libvirt instead of printing: {define_help}")
    parser.add_argument("--validate", action="store_true",
                        help="check the document against libvirt's RelaxNG schema first")
    parser.add_argument("--from", dest="from_file", metavar="FILE",
                        help="read the document from FILE ('-': stdin) instead of building it from the config")
    parser.add_argument("--templates", type=Path, metavar="DIR", help="template folder (default: [xml] templates)")
    parser.set_defaults(func=cmd_xml)


def _monitors_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--monitors", type=_monitors_arg, metavar="LIST",
                        help="host[:port],… instead of [ceph] monitors ([v6]:port for IPv6)")


def _monitors_arg(text: str):
    try:
        return parse_monitors(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _iotune_arg(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name or not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=WHOLE_NUMBER (e.g. total_iops_sec=500)")
    return name, int(value)


# --- the command ---------------------------------------------------------------------------

def cmd_xml(args) -> int:
    if getattr(args, "domain", None) and not args.define:
        raise UsageError("xml disk: --domain is for --define (to print, pipe into virsh attach-device DOMAIN)")
    config = _config(args)
    model = _read_document(args) if args.from_file else _build(args, config)
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
            return hypervisor.secret_def(config)
        if kind == "pool":
            return hypervisor.pool_def(config)
        if kind == "volume":
            _require(args, "image", "size")
            return VolumeDef(_image(args, config, allow_snapshot=False).image, args.size)
        _require(args, "image", "target")
        tuning = dict(bus=args.bus, cache=args.cache, discard=args.discard, io=args.io, serial=args.serial,
                      iotune=tuple(args.iotune or ()))
        return hypervisor.disk_def(config, _image(args, config, allow_snapshot=True), args.target,
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
    model = MODELS[kind].from_element(root)
    if kind == "disk" and args.target and model.target != args.target:
        raise InvalidXMLError(f"{args.from_file}: the disk's target is {model.target}, not {args.target}")
    return model


def _pick_disk(disks: list[DiskDef], target: str | None) -> DiskDef:
    """From a whole domain: the rbd disk at --target, or its only one."""
    if target:
        for disk in disks:
            if disk.target == target:
                return disk
        raise InvalidXMLError(f"the domain has no rbd disk at target {target}")
    if len(disks) != 1:
        targets = ", ".join(d.target for d in disks) or "none"
        raise UsageError(f"xml disk: the domain has {len(disks)} rbd disks ({targets}); choose one with --target")
    return disks[0]


def _check_define(args, config: Config) -> None:
    """What --define needs beyond the document, checked before anything is contacted."""
    if args.xml_kind == "disk" and not args.domain:
        raise UsageError("xml disk: --define needs --domain NAME")
    if args.xml_kind == "volume" and args.image:
        hypervisor.volume_pool(config, _image(args, config, allow_snapshot=False))


def _apply(args, config: Config, model, markup: CloneMarkup | None = None) -> hypervisor.Applied:
    kind = args.xml_kind
    if kind == "volume":
        with Storage(config) as storage, Host(config.libvirt.uri) as host:
            return hypervisor.ensure_volume(host, storage.cluster, config, model)
    with Host(config.libvirt.uri) as host:
        if kind == "secret":
            return hypervisor.ensure_secret(host, config, model)
        if kind == "pool":
            return hypervisor.ensure_pool(host, config, model, autostart=not args.no_autostart)
        return hypervisor.attach_disk(host, config, args.domain, model, markup)
