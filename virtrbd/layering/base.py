"""What every layering operation shares: the connection, the depth policy, metadata keys, the snapshot cache."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..ceph import Cluster
from ..spec import ImageSpec

#: image metadata key naming the golden snapshot of a golden image
GOLDEN_KEY = "virtrbd.golden"


DEFAULT_GOLDEN_SNAPSHOT = "golden"


#: image metadata set while a flatten runs; found by the next flatten, it means "interrupted"
FLATTEN_MARK = "virtrbd.flattening"


@dataclass
class _SnapshotFacts:
    """What a clone needs to know about its parent snapshot; snapshots are immutable, so it is cached."""

    size: int
    depth: int              # ancestors of the snapshot's image at that snapshot
    protected: bool


@dataclass
class _Cache:
    facts: dict[ImageSpec, _SnapshotFacts] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LayeringBase:
    """One connected cluster and the clone-depth policy; the snapshot facts clones need, cached."""

    def __init__(self, cluster: Cluster, *, max_clone_depth: int = 5):
        self.cluster = cluster
        self.max_clone_depth = max_clone_depth
        self._cache = _Cache()


def _metadata(image, key: str) -> str | None:
    """An image-metadata value, or None when the key is not set."""
    try:
        return image.metadata_get(key)
    except KeyError:
        return None
