"""The libvirt secret (usage type ceph) that holds a cephx key for QEMU and the rbd pool.

Only the definition is XML; the key itself is set with ``virSecretSetValue``
by ``virtrbd.libvirt.host`` and never appears in any document.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from ..errors import InvalidXMLError
from . import nodes, safe, templates
from .common import check_uuid


@dataclass(frozen=True)
class SecretDef:
    usage_name: str
    uuid: str | None = None
    description: str | None = None
    private: bool = True        # libvirt never hands the value back (only a non-private one can be read)
    #: the document this was read from: rendering changes in a copy of it only what differs from it
    origin: etree._Element | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.usage_name.strip():
            raise ValueError("empty secret usage name")
        object.__setattr__(self, "usage_name", self.usage_name.strip())  # as it reads back from the XML
        object.__setattr__(self, "uuid", check_uuid(self.uuid))

    def to_element(self, template_dir: Path | None = None) -> etree._Element:
        root, complete = templates.starting_point("secret", self, template_dir)
        if complete:
            return root
        nodes.put_attr(root, ".", "private", "yes" if self.private else "no")
        nodes.put_text(root, "uuid", self.uuid)
        nodes.put_text(root, "description", self.description)
        nodes.put_attr(root, "usage", "type", "ceph")
        nodes.put_text(root, "usage/name", self.usage_name)
        return root

    def to_xml(self, template_dir: Path | None = None) -> str:
        return safe.tostring(self.to_element(template_dir))

    @classmethod
    def from_element(cls, root: etree._Element) -> SecretDef:
        if root.tag != "secret":
            raise InvalidXMLError(f"expected a <secret> document, got <{root.tag}>")
        if nodes.attr(root, "usage", "type") != "ceph":
            raise InvalidXMLError("secret: usage type is not 'ceph'")
        try:
            return cls(usage_name=nodes.text(root, "usage/name") or "", uuid=nodes.text(root, "uuid"),
                       description=nodes.text(root, "description"), private=root.get("private") == "yes",
                       origin=copy.deepcopy(root))
        except ValueError as exc:
            raise InvalidXMLError(f"secret: {exc}") from None

    @classmethod
    def from_xml(cls, text: str | bytes) -> SecretDef:
        return cls.from_element(safe.parse(text, what="secret XML"))
