"""A volume of a libvirt rbd pool: one raw RBD image, named within the pool, with its capacity."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from ..errors import InvalidSpecError, InvalidXMLError
from ..spec import check_name
from . import nodes, safe, templates
from .common import scaled_integer


@dataclass(frozen=True)
class VolumeDef:
    name: str           # the image's name in the pool behind the libvirt pool
    capacity: int       # bytes (an RBD image may be empty: 0 is allowed)
    #: the document this was read from: rendering changes in a copy of it only what differs from it
    origin: etree._Element | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_name("image", self.name)  # the same rules as every image spec: no '/', '@', '..'
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 0:
            raise ValueError(f"volume capacity {self.capacity!r} is not a number of bytes")

    def to_element(self, template_dir: Path | None = None) -> etree._Element:
        root, complete = templates.starting_point("volume", self, template_dir)
        if complete:
            return root
        nodes.put_attr(root, ".", "type", "network")
        nodes.put_text(root, "name", self.name)
        nodes.put_text(root, "capacity", self.capacity)
        nodes.put_attr(root, "capacity", "unit", "bytes")
        nodes.put_attr(root, "target/format", "type", "raw")  # libvirt's rbd backend makes nothing else
        return root

    def to_xml(self, template_dir: Path | None = None) -> str:
        return safe.tostring(self.to_element(template_dir))

    @classmethod
    def from_element(cls, root: etree._Element) -> VolumeDef:
        """Also reads ``virsh vol-dumpxml``: key, allocation and target path are libvirt's, not ours."""
        if root.tag != "volume":
            raise InvalidXMLError(f"expected a <volume> document, got <{root.tag}>")
        if root.get("type") not in (None, "network"):
            raise InvalidXMLError(f"volume: type {root.get('type')!r} is not an rbd volume (network)")
        fmt = nodes.attr(root, "target/format", "type")
        if fmt not in (None, "raw"):
            raise InvalidXMLError(f"volume: format {fmt!r}: rbd volumes are raw only")
        capacity = root.find("capacity")
        if capacity is None:
            raise InvalidXMLError("volume: missing <capacity>")
        size = scaled_integer(capacity.text, capacity.get("unit"), "volume capacity")
        try:
            return cls(name=nodes.text(root, "name") or "", capacity=size, origin=copy.deepcopy(root))
        except (ValueError, InvalidSpecError) as exc:
            raise InvalidXMLError(f"volume: {exc}") from None

    @classmethod
    def from_xml(cls, text: str | bytes) -> VolumeDef:
        return cls.from_element(safe.parse(text, what="volume XML"))
