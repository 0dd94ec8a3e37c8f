"""A disk's ``<encryption>``: the image holds LUKS ciphertext, opened with a libvirt secret.

Dropping it from a disk would hand the guest the ciphertext, and the guest's
first write would overwrite the LUKS header, so virtrbd reads it as a field of
its own.  libvirt accepts it beside ``<source>`` (its older place) or inside it;
``engine`` says who decrypts: QEMU (the default) or librbd itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from ..errors import InvalidXMLError
from . import nodes
from .common import SecretRef, check_choice

FORMATS = ("default", "qcow", "luks", "luks2")
ENGINES = ("qemu", "librbd")


@dataclass(frozen=True)
class Encryption:
    format: str                         # luks, luks2 (qcow and default are what libvirt's schema also allows)
    engine: str | None = None           # None: libvirt's default, QEMU
    secret: SecretRef | None = None     # the libvirt secret of type 'passphrase'

    def __post_init__(self) -> None:
        check_choice("encryption format", self.format, FORMATS)
        check_choice("encryption engine", self.engine, ENGINES)

    def fill(self, node: etree._Element) -> None:
        """Write the fields into ``node`` (an ``<encryption>``), keeping what else it holds (cipher, ivgen)."""
        nodes.put_attr(node, ".", "format", self.format)
        nodes.put_attr(node, ".", "engine", self.engine)
        if self.secret is None:
            nodes.remove(node, "secret")
        else:
            secret = nodes.ensure(node, "secret")
            secret.set("type", "passphrase")
            self.secret.fill(secret)

    @classmethod
    def read(cls, node: etree._Element | None, what: str) -> Encryption | None:
        if node is None:
            return None
        secret_node = node.find("secret")
        secret = None if secret_node is None else SecretRef.read(secret_node, f"{what}: encryption")
        try:
            return cls(node.get("format") or "", node.get("engine"), secret)
        except ValueError as exc:
            raise InvalidXMLError(f"{what}: {exc}") from None


def find(disk: etree._Element) -> etree._Element | None:
    """The disk's ``<encryption>``, inside ``<source>`` or beside it."""
    node = disk.find("source/encryption")
    return node if node is not None else disk.find("encryption")
