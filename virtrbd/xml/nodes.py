"""A small xpath-style filler: set and read the few nodes a model owns.

Paths are plain child steps (``source/host``, ``{ns}config_opts/{ns}option``).
Writing creates missing elements (an operator's template may lack them) and a
``None`` value removes the node, so whatever else an operator put into a
template — a ``cache='writeback'``, an extra element — passes through untouched.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import TypeVar

from lxml import etree

T = TypeVar("T")


def steps(path: str) -> list[str]:
    """``a/{ns}b`` → ``['a', '{ns}b']``: a namespace URI's own slashes do not split."""
    return re.findall(r"(?:\{[^}]*\})?[^/{]+", path)


def ensure(root: etree._Element, path: str) -> etree._Element:
    """The element at ``path`` below ``root``, created (with its parents) when missing."""
    node = root
    for step in steps(path):
        child = node.find(step)
        if child is None:
            child = etree.SubElement(node, step)
        node = child
    return node


def put_text(root: etree._Element, path: str, value: object | None) -> None:
    if value is None:
        remove(root, path)
    else:
        ensure(root, path).text = str(value)


def put_attr(root: etree._Element, path: str, name: str, value: object | None) -> None:
    if value is None:
        node = root.find(path) if path != "." else root
        if node is not None and name in node.attrib:
            del node.attrib[name]
    else:
        node = root if path == "." else ensure(root, path)
        node.set(name, str(value))


def remove(root: etree._Element, path: str) -> None:
    for node in root.findall(path):
        node.getparent().remove(node)


def remove_if_empty(root: etree._Element, path: str) -> None:
    for node in root.findall(path):
        if len(node) == 0 and not node.attrib and not (node.text or "").strip():
            node.getparent().remove(node)


def repeat(root: etree._Element, path: str, items: Iterable[T], fill: Callable[[etree._Element, T], None]) -> None:
    """One copy of the template's element at ``path`` per item, in order, where the first one stood."""
    existing = root.findall(path)
    if existing:
        prototype = existing[0]
        parent = prototype.getparent()
        index = parent.index(prototype)
    else:
        *parent_steps, tag = steps(path)
        parent = ensure(root, "/".join(parent_steps)) if parent_steps else root
        prototype = etree.Element(tag)
        index = len(parent)
    for node in existing:
        parent.remove(node)
    for offset, item in enumerate(items):
        node = copy.deepcopy(prototype)
        fill(node, item)
        parent.insert(index + offset, node)


def text(root: etree._Element, path: str) -> str | None:
    node = root.find(path)
    return None if node is None or node.text is None else node.text.strip()


def attr(root: etree._Element, path: str, name: str) -> str | None:
    node = root if path == "." else root.find(path)
    return None if node is None else node.get(name)
