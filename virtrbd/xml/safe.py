"""Parsing XML that may come from anyone: the hook's stdin, a user's file.

Any DOCTYPE or ENTITY declaration is refused outright (libvirt never writes
one, and it is the door to entity-expansion and external-entity attacks) and
the input is bounded in size — both before a parser sees a byte.  lxml is then
told not to resolve entities, not to load DTDs and not to touch the network.
``parse_plain`` gives the same guarantees with the standard library's expat
parser, for the qemu hook, which must not pay for importing lxml.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, BinaryIO

from ..errors import InvalidXMLError

if TYPE_CHECKING:
    from lxml import etree

#: libvirt's own domain documents are a few tens of KiB; 4 MiB leaves room and stops abuse
MAX_BYTES = 4 * 1024 * 1024

_PARSER_OPTIONS = dict(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                       huge_tree=False, remove_blank_text=True)


def screened(data: bytes | str, what: str, max_bytes: int) -> bytes:
    """``data`` as bytes once it is known to be small enough, not empty, and free of declarations."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > max_bytes:
        raise InvalidXMLError(f"{what}: larger than {max_bytes // 1024} KiB")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise InvalidXMLError(f"{what}: DOCTYPE and ENTITY declarations are not accepted")
    if not data.strip():
        raise InvalidXMLError(f"{what}: empty document")
    return data


def parse_plain(data: bytes | str, *, what: str = "XML", max_bytes: int = MAX_BYTES):
    """Like ``parse``, with the standard library's ElementTree (expat): no DTD reaches it, so no entity."""
    from xml.etree import ElementTree

    data = screened(data, what, max_bytes)
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise InvalidXMLError(f"{what}: not well-formed XML: {exc}") from None


def parse(data: bytes | str, *, what: str = "XML", max_bytes: int = MAX_BYTES) -> etree._Element:
    """The root element of ``data``, or an ``InvalidXMLError`` naming ``what`` and the problem."""
    from lxml import etree

    data = screened(data, what, max_bytes)
    try:
        root = etree.fromstring(data, etree.XMLParser(**_PARSER_OPTIONS))
    except etree.XMLSyntaxError as exc:
        raise InvalidXMLError(f"{what}: not well-formed XML: {exc.msg}") from None
    if root.getroottree().docinfo.doctype:
        raise InvalidXMLError(f"{what}: DOCTYPE declarations are not accepted")
    return root


def parse_stream(stream: BinaryIO, *, what: str = "XML", max_bytes: int = MAX_BYTES) -> etree._Element:
    """Like ``parse``, reading at most one byte more than allowed: a 50 MB file or an endless
    pipe is refused after ``max_bytes``, not loaded into memory first."""
    return parse(stream.read(max_bytes + 1), what=what, max_bytes=max_bytes)


def parse_file(path: str | os.PathLike[str], *, what: str | None = None,
               max_bytes: int = MAX_BYTES) -> etree._Element:
    """The document in file ``path``; an unreadable file is an ``InvalidXMLError`` too."""
    what = what or str(path)
    try:
        with open(path, "rb") as stream:
            return parse_stream(stream, what=what, max_bytes=max_bytes)
    except OSError as exc:
        raise InvalidXMLError(f"{what}: cannot read: {exc.strerror}") from None


def tostring(root: etree._Element) -> str:
    """Indented text, as virsh prints it, ending with a newline."""
    from lxml import etree

    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode") + "\n"
