"""Pieces shared by several documents: references to a secret, lists of monitors."""

from __future__ import annotations

import uuid as uuid_module
from dataclasses import dataclass

from lxml import etree

from ..errors import InvalidXMLError
from ..monitor import Monitor
from . import nodes


@dataclass(frozen=True)
class SecretRef:
    """A reference to a libvirt secret, by UUID or by usage name (exactly one)."""

    uuid: str | None = None
    usage: str | None = None

    def __post_init__(self) -> None:
        if (self.uuid is None) == (self.usage is None):
            raise ValueError("a secret is referenced by uuid or by usage, exactly one of them")
        if self.uuid is not None:
            object.__setattr__(self, "uuid", str(uuid_module.UUID(self.uuid)))
        elif not (self.usage or "").strip():
            raise ValueError("empty secret usage name")

    def fill(self, node: etree._Element) -> None:
        nodes.put_attr(node, ".", "uuid", self.uuid)
        nodes.put_attr(node, ".", "usage", self.usage)

    @classmethod
    def read(cls, node: etree._Element, what: str) -> SecretRef:
        try:
            return cls(uuid=node.get("uuid"), usage=node.get("usage"))
        except ValueError as exc:
            raise InvalidXMLError(f"{what}: secret: {exc}") from None


def fill_host(node: etree._Element, monitor: Monitor) -> None:
    nodes.put_attr(node, ".", "name", monitor.host)
    nodes.put_attr(node, ".", "port", monitor.port)


def read_hosts(parent: etree._Element, what: str) -> tuple[Monitor, ...]:
    monitors = []
    for host in parent.findall("host"):
        port = host.get("port")
        try:
            monitors.append(Monitor(host.get("name") or "", int(port) if port else None))
        except ValueError as exc:
            raise InvalidXMLError(f"{what}: host: {exc}") from None
    return tuple(monitors)


def check_uuid(value: str | None) -> str | None:
    return None if value is None else str(uuid_module.UUID(value))


def check_choice(what: str, value: str | None, choices: tuple[str, ...]) -> None:
    """A ValueError naming the allowed values, so a typo fails here and not inside libvirt."""
    if value is not None and value not in choices:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(choices)}")


_SCALE = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def scaled_integer(text: str | None, unit: str | None, what: str) -> int:
    """Bytes from libvirt's ``<capacity unit='…'>N</capacity>``.

    libvirt reads the unit's first letter case-insensitively; alone or with
    ``iB`` it is a power of 1024, with ``B`` a power of 1000 (``k``, ``KiB``,
    ``KB``); ``b``/``bytes`` or no unit at all mean bytes.
    """
    number = (text or "").strip()
    if not (number.isascii() and number.isdigit()):
        raise InvalidXMLError(f"{what}: {number!r} is not a whole number")
    unit = (unit or "bytes").strip()
    if unit.lower() in ("b", "bytes"):
        return int(number)
    letter, suffix = unit[:1].lower(), unit[1:]
    if letter not in _SCALE or suffix not in ("", "iB", "B"):
        raise InvalidXMLError(f"{what}: unknown unit {unit!r}")
    base = 1000 if suffix == "B" else 1024
    return int(number) * base ** _SCALE[letter]
