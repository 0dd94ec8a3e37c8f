"""Checking a document against libvirt's own RelaxNG schemas (``--validate``, and the tests).

libvirt installs them in /usr/share/libvirt/schemas (Debian: package libvirt0).
A disk is checked by ``domain.rng`` itself with the grammar's start moved to its
``disk`` definition: libxml2 then names the attribute or element at fault,
where checking a disk wrapped in a whole domain only reports "Extra element
devices in interleave".
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lxml import etree

from ..errors import ConfigError, InvalidXMLError

SCHEMA_DIR = Path("/usr/share/libvirt/schemas")

#: document kind → (schema file, the grammar's definition to start from, or None for its own start)
SCHEMAS = {
    "secret": ("secret.rng", None),
    "pool": ("storagepool.rng", None),
    "volume": ("storagevol.rng", None),
    "disk": ("domain.rng", "disk"),
    "domain": ("domain.rng", None),
}

_RNG = "http://relaxng.org/ns/structure/1.0"


@cache
def _relaxng(path: Path, start: str | None) -> etree.RelaxNG:
    if not path.is_file():
        raise ConfigError(f"{path}: libvirt's RelaxNG schema is missing (install libvirt0)")
    try:
        if start is None:
            return etree.RelaxNG(etree.parse(str(path)))
        grammar = etree.Element(f"{{{_RNG}}}grammar", nsmap={None: _RNG})
        include = etree.SubElement(grammar, f"{{{_RNG}}}include", href=str(path))
        etree.SubElement(etree.SubElement(include, f"{{{_RNG}}}start"), f"{{{_RNG}}}ref", name=start)
        return etree.RelaxNG(grammar)
    except (etree.RelaxNGParseError, etree.XMLSyntaxError) as exc:
        raise ConfigError(f"{path}: cannot load libvirt's RelaxNG schema: {exc}") from None


def validate(root: etree._Element, kind: str, schema_dir: Path = SCHEMA_DIR) -> None:
    """Nothing when ``root`` is a valid ``kind`` document; else an ``InvalidXMLError`` naming the first problem."""
    filename, start = SCHEMAS[kind]
    path = schema_dir / filename
    schema = _relaxng(path, start)
    if schema.validate(root):
        return
    error = schema.error_log[0]
    where = f"{error.path}: " if error.path else ""
    raise InvalidXMLError(f"{kind} XML does not match libvirt's schema {path.name}: {where}{error.message}")
