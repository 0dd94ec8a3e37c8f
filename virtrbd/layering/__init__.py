"""Layering through librbd: snapshots, golden images, clones, flatten and safe deletion.

This is what libvirt's rbd backend cannot do.  Snapshots stay in the cluster;
a golden image is an image with a protected snapshot recorded in its metadata;
clones are copy-on-write children of a snapshot.  Two rules shape the code:

* Refuse before changing anything.  Deletion, unprotect and rollback first
  gather every reason to refuse (open by a client, snapshots, clones — also
  clones in the trash and those hanging on snapshots that clone v2 moved to the
  trash namespace) and name them all, so nothing is stranded half-way and the
  user sees the true cause instead of librbd's bare EBUSY.
* A clone either exists complete or not at all: when a resize or flatten that
  belongs to the same request fails, the new child is removed again.

Everything works on parsed ``ImageSpec`` values; the public API (``Storage``)
parses user text and delegates here.

The rooms stand in one order, each building on the one before, so that no
part imports another in a circle: ``base`` (the connection, metadata keys, the
cache) under ``inspection`` (facts and refusals), then ``snapshots`` (and golden
images), ``clones`` (and flatten), ``removal``; ``Layering`` is the last of
them, the facade callers use.
"""

from .base import DEFAULT_GOLDEN_SNAPSHOT, FLATTEN_MARK, GOLDEN_KEY
from .clones import flatten_safely
from .removal import Removal
from .results import CloneResult, Dependent, ImageInfo, RemoveResult, SnapshotInfo


class Layering(Removal):
    """Layering operations on one connected cluster: every operation of the rooms above, in one object."""


__all__ = ["DEFAULT_GOLDEN_SNAPSHOT", "FLATTEN_MARK", "GOLDEN_KEY", "CloneResult", "Dependent", "ImageInfo",
           "Layering", "RemoveResult", "SnapshotInfo", "flatten_safely"]
