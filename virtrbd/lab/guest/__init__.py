"""Real Linux guests for the lab: a kit made from Debian's packages, and domains that boot it from RBD.

Lab code: the tests and the demo use it, nothing in the storage path imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

#: where the lab keeps what it found out about KVM (in the guests' folder)
ACCELERATOR_FILE = "accelerator.json"


def accelerator_said(folder: Path) -> dict | None:
    """What the lab found out about KVM for its guests (``domain_type``, ``why``); None before the first guest."""
    try:
        said = json.loads((Path(folder) / ACCELERATOR_FILE).read_text())
    except (OSError, ValueError):
        return None
    return said if isinstance(said, dict) else None
