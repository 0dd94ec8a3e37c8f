"""virtrbd's own markup in a domain's ``<metadata>``: which disks are clones of a golden snapshot.

::

    <metadata>
      <virtrbd:clones xmlns:virtrbd="urn:x-virtrbd:domain:1">
        <virtrbd:disk target="vda" clone-of="rbd/golden@golden" ephemeral="yes" size="21474836480"/>
      </virtrbd:clones>
    </metadata>

The qemu hook reads it at ``prepare begin`` (clone the disk's image when it
does not exist) and ``release end`` (remove the ephemeral clones this domain
made).  The image itself is the disk's ``<source protocol='rbd' name=…>``;
the markup only says where it comes from and how long it lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InvalidSpecError, InvalidXMLError
from ..spec import ImageSpec

if TYPE_CHECKING:
    from lxml import etree

# Reading works on lxml and on the standard library's elements alike (the qemu hook parses with the
# latter, to spare itself lxml's import); rendering uses lxml.

NAMESPACE = "urn:x-virtrbd:domain:1"
PREFIX = "virtrbd"
_CLONES = f"{{{NAMESPACE}}}clones"
_DISK = f"{{{NAMESPACE}}}disk"


@dataclass(frozen=True)
class CloneMarkup:
    """One disk (by target dev) that is a clone of ``clone_of``."""

    target: str
    clone_of: ImageSpec
    ephemeral: bool = False
    size: int | None = None

    def __post_init__(self) -> None:
        if not self.target or not self.target.isalnum():
            raise ValueError(f"invalid target dev {self.target!r}")
        if self.clone_of.snapshot is None:
            raise ValueError(f"clone-of {self.clone_of} names no snapshot (POOL/IMAGE@SNAP)")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"invalid size {self.size}")


def render(disks: list[CloneMarkup], *, namespaced: bool = True) -> etree._Element:
    """The ``<virtrbd:clones>`` element to put into a domain's ``<metadata>``.

    ``namespaced=False`` gives the bare ``<clones>`` that virDomainSetMetadata
    wants: libvirt puts it into the namespace it is given itself.
    """
    from lxml import etree

    clones, disk_tag = (_CLONES, _DISK) if namespaced else ("clones", "disk")
    root = etree.Element(clones, nsmap={PREFIX: NAMESPACE} if namespaced else None)
    for disk in disks:
        node = etree.SubElement(root, disk_tag, target=disk.target, **{"clone-of": str(disk.clone_of)})
        node.set("ephemeral", "yes" if disk.ephemeral else "no")
        if disk.size is not None:
            node.set("size", str(disk.size))
    return root


def parse(domain: etree._Element) -> list[CloneMarkup]:
    """The clone markup of a domain document (empty when it has none)."""
    clones = domain.find(f"metadata/{_CLONES}")
    return [] if clones is None else parse_clones(clones)


def merge(current: list[CloneMarkup], added: list[CloneMarkup]) -> list[CloneMarkup]:
    """``current`` with ``added`` taking the place of entries for the same targets."""
    replaced = {disk.target for disk in added}
    return [disk for disk in current if disk.target not in replaced] + list(added)


def parse_clones(clones: etree._Element) -> list[CloneMarkup]:
    """The entries of one ``<virtrbd:clones>`` element, or of the bare ``<clones>`` that
    virDomainGetMetadata returns (libvirt strips the namespace it was given)."""
    if clones.tag not in (_CLONES, "clones"):
        raise InvalidXMLError(f"expected <virtrbd:clones> in namespace {NAMESPACE}, got <{clones.tag}>")
    result = []
    for node in clones.findall(_DISK if clones.tag == _CLONES else "disk"):
        target = node.get("target") or ""
        try:
            clone_of = ImageSpec.parse(node.get("clone-of") or "")
            ephemeral = _yes_no(node.get("ephemeral", "no"))
            size_text = node.get("size")
            if size_text is not None and not (size_text.isascii() and size_text.isdigit()):
                raise ValueError(f"size {size_text!r} is not a number of bytes")
            size = int(size_text) if size_text is not None else None
            result.append(CloneMarkup(target, clone_of, ephemeral, size))
        except (ValueError, InvalidSpecError) as exc:
            raise InvalidXMLError(f"virtrbd markup for disk {target or '?'}: {exc}") from None
    targets = [d.target for d in result]
    if len(set(targets)) != len(targets):
        raise InvalidXMLError("virtrbd markup names a disk target twice")
    return result


def rbd_disk_images(domain: etree._Element, targets: set[str] | None = None) -> dict[str, ImageSpec]:
    """Target dev → RBD image of every ``<disk type='network'>`` with ``protocol='rbd'``, or of those whose
    target is in ``targets``: a disk nobody asked about (a legacy ``pool/image:option=value`` name, a
    hostless disk) is never read, so it can never stop the work on another."""
    images = {}
    for disk in domain.findall("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        if source is None or target is None or source.get("protocol") != "rbd":
            continue
        if targets is not None and target.get("dev") not in targets:
            continue
        try:
            images[target.get("dev")] = ImageSpec.parse(source.get("name") or "")
        except InvalidSpecError as exc:
            raise InvalidXMLError(f"disk {target.get('dev')}: {exc}") from None
    return images


def _yes_no(text: str) -> bool:
    if text in ("yes", "true", "1"):
        return True
    if text in ("no", "false", "0"):
        return False
    raise ValueError(f"ephemeral={text!r} is not yes or no")
