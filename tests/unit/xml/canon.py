"""Canonical XML (C14N 2.0) for comparing documents: layout and comments aside, every byte counts."""

from __future__ import annotations

from lxml import etree


def canonical(element: etree._Element) -> bytes:
    """The element alone, canonicalised: attribute order, quoting and indentation no longer matter."""
    return etree.tostring(element, method="c14n2", with_comments=False, strip_text=True)
