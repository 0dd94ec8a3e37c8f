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
from pathlib import Path

from ..monitor import parse_monitors
from ..xml.choices import BUSES, CACHE_MODES, DISCARD_MODES, IO_MODES
from .common import size_arg


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
    from .xml_apply import run  # lxml and the libvirt side load only for this command
    return run(args)
