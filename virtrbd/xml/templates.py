"""Where the XML skeletons live, and loading a fresh copy of one.

virtrbd ships one skeleton per document in ``xml_templates/``; an operator can
point ``[xml] templates`` at a folder of their own (copy ours and adapt, e.g.
``cache='writeback'``).  A folder only needs the templates it wants to change:
any it lacks come from the shipped set.
"""

from __future__ import annotations

import copy
import sys
from functools import lru_cache
from pathlib import Path

from lxml import etree

from ..errors import ConfigError
from . import safe

NAMES = ("secret", "pool", "volume", "disk")


def shipped_dir() -> Path:
    """The shipped folder: beside the package in a checkout, under share/ when installed."""
    checkout = Path(__file__).resolve().parents[2] / "xml_templates"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "virtrbd" / "xml_templates"


@lru_cache(maxsize=32)
def _parsed(path: Path) -> etree._Element:
    try:
        with path.open("rb") as stream:
            return safe.parse_stream(stream, what=f"template {path}")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read template: {exc.strerror}") from None


def starting_point(name: str, model, directory: Path | None = None) -> tuple[etree._Element, bool]:
    """What ``model`` renders into, and whether it is complete already.

    A model read from a document (its ``origin``) renders into a copy of that
    document, so that what virtrbd does not model, and what the document
    lacked, stays as it was; when its typed fields are still what the document
    says, the copy is the whole answer (True).  Any other model starts from a
    copy of template ``name``.
    """
    if model.origin is None:
        return load(name, directory), False
    return copy.deepcopy(model.origin), type(model).from_element(model.origin) == model


def load(name: str, directory: Path | None = None) -> etree._Element:
    """A fresh, modifiable copy of template ``name`` (``secret``, ``pool``, …)."""
    if name not in NAMES:
        raise ValueError(f"unknown template {name!r}")
    if directory is not None and not directory.is_dir():  # a typo must not silently mean "shipped"
        raise ConfigError(f"{directory}: template folder not found")
    candidates = [directory / f"{name}.xml"] if directory else []
    candidates.append(shipped_dir() / f"{name}.xml")
    for path in candidates:
        if path.is_file():
            return copy.deepcopy(_parsed(path.resolve()))
    raise ConfigError(f"{candidates[-1]}: template not found (is virtrbd installed completely?)")
