"""What every layering operation shares: the connection, the depth policy, metadata keys, the snapshot cache."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from ..ceph import Cluster
from ..spec import ImageSpec

#: image metadata key naming the golden snapshot of a golden image
GOLDEN_KEY = "virtrbd.golden"


DEFAULT_GOLDEN_SNAPSHOT = "golden"


#: image metadata key prefix: ``virtrbd.consistency.SNAP`` says how snapshot SNAP of this image was taken
CONSISTENCY_PREFIX = "virtrbd.consistency."
#: what a recorded snapshot holds: a filesystem the guest froze or shut down cleanly, or what a power cut leaves
CONSISTENCIES = ("application", "crash")


@dataclass(frozen=True)
class ConsistencyRecord:
    """How one image's snapshot was taken with its domain's other disks, in the image's metadata.

    It names the snapshot's id: librbd copies metadata into clones, and a name
    can be taken again after a removal, but an id is never reused in a pool.
    """

    snap_id: int
    consistency: str                # one of CONSISTENCIES
    domain_uuid: str
    domain_name: str
    disks: tuple[str, ...]          # every POOL/IMAGE taken at the same instant, this one included

    @staticmethod
    def key(snapshot: str) -> str:
        return CONSISTENCY_PREFIX + snapshot

    def to_json(self) -> str:
        return json.dumps({"snap_id": self.snap_id, "consistency": self.consistency, "domain_uuid": self.domain_uuid,
                           "domain_name": self.domain_name, "disks": list(self.disks)}, sort_keys=True)

    @classmethod
    def read(cls, image, snapshot: str, snap_id: int) -> ConsistencyRecord | None:
        """The record of ``snapshot`` on ``image`` when it was made for this very snapshot, else None."""
        text = _metadata(image, cls.key(snapshot))
        if not text:
            return None
        try:
            found = json.loads(text)
            record = cls(int(found["snap_id"]), str(found["consistency"]), str(found["domain_uuid"]),
                         str(found["domain_name"]), tuple(str(d) for d in found["disks"]))
        except (ValueError, KeyError, TypeError):
            return None
        if record.snap_id != snap_id or record.consistency not in CONSISTENCIES:
            return None
        return record


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
