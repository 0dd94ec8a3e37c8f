"""How a restore has librbd write its image faster: the client's settings and the object map held back.

Only speed-ups: where librbd refuses one, the restore writes as any client
would.  The measurements behind the numbers are in docs/performance.md.
"""

from __future__ import annotations

import logging

from ..ceph import Cluster, RbdImage, translated
from ..ceph.image import OBJECT_MAP_FEATURES
from ..errors import VirtrbdError
from .results import RestorePlan

log = logging.getLogger(__name__)

#: librbd settings for the image a restore writes, while it writes:
#:
#: * cache off, zero-copy writes on: its data is written once, in 4 MiB pieces, and never read back;
#:   librbd's cache would only copy every byte and then hold the copies, and with zero-copy writes
#:   librbd sends our buffer itself (``RbdSink`` keeps it alive until the write completes): less CPU
#:   in the client and a lower peak RSS.
#: * 32 concurrent management operations instead of 10: the object map's rebuild
#:   (``restore_object_map``) reads every object's state this many at a time.
#:
#: A client that only restores (the ``restore`` command) has them for its whole connection
#: (``Storage(ceph_options=RESTORE_CONFIG)``).  Any other gets them as per-image overrides (image
#: metadata, as ``rbd config image set`` stores them) for the temporary image alone, which costs
#: storing them, a second open and removing them.  The figures: docs/performance.md.
RESTORE_CONFIG = {"rbd_cache": "false", "rbd_disable_zero_copy_writes": "false",
                  "rbd_concurrent_management_ops": "32"}


def client_has_restore_config(cluster: Cluster) -> bool:
    """Whether the connection itself has ``RESTORE_CONFIG``, so the image needs no overrides.

    (A pool-level override, ``rbd config pool set``, still wins over it, as
    it does for every image of that pool.)
    """
    return all(cluster.setting(key) == value for key, value in RESTORE_CONFIG.items())


def configure_for_restore(cluster: Cluster, pool: str, name: str) -> None:
    """Store ``RESTORE_CONFIG`` in the new image; librbd applies it when the image is next opened."""
    what = f"{pool}/{name}"
    with cluster.image(pool, name) as image, translated(f"setting the restore's config of {what}"):
        for key, value in RESTORE_CONFIG.items():
            image.metadata_set(f"conf_{key}", value)


def forget_restore_config(image: RbdImage, what: str) -> None:
    """Remove the restore's overrides, so the restored image behaves as its pool's other images do."""
    with translated(f"removing the restore's config of {what}"):
        for key in RESTORE_CONFIG:
            image.metadata_remove(f"conf_{key}")


#: librbd updates a new image's object map (and fast-diff, which rests on it) before the first write
#: to each of its objects: one more write that the OSD commits, per object.  A restore that fills a
#: good part of the image writes faster with the map switched off and rebuilt once at the end, which
#: costs a read of every object's state instead.  An update per object written costs about eight times
#: what the rebuild costs per object of the image, so the map is held back when the backup holds data
#: for at least this share of the image's objects; below it the updates are cheaper.  Switching the
#: features off and on costs what the updates of a few dozen objects cost: a restore with less data
#: than HOLD_BACK_OBJECT_MAP_MIN objects' worth keeps the map on whatever the share.  The figures
#: behind both numbers: docs/performance.md.
HOLD_BACK_OBJECT_MAP_SHARE = 1 / 8


HOLD_BACK_OBJECT_MAP_MIN = 64


def hold_back_object_map(image: RbdImage, plan: RestorePlan, what: str) -> int:
    """Switch the new image's object map off for the restore when rebuilding it is cheaper.

    Returns the features ``restore_object_map`` must see on again (0: the
    map was left alone).  Only a speed-up: where librbd refuses, the restore
    writes with the map on; an error that may have come after the change
    (a timeout) is settled at the end, when the features are compared.
    """
    features = image.features() & OBJECT_MAP_FEATURES
    data = plan.data_bytes
    enough = max(HOLD_BACK_OBJECT_MAP_SHARE * plan.newest.size, HOLD_BACK_OBJECT_MAP_MIN * plan.newest.object_size)
    if not features or data is None or data < enough:
        return 0
    try:
        with translated(f"switching the object map of {what} off while it is written"):
            image.update_features(features, False)
    except VirtrbdError as exc:
        log.info("%s; the restore keeps it up to date instead", exc)
    return features


def restore_object_map(image: RbdImage, features: int, what: str) -> None:
    """Switch back on those of ``features`` that are off and build the map from the objects written.

    Called before any snapshot: a snapshot's object map is a copy of the image's.
    """
    with translated(f"rebuilding the object map of {what}"):
        off = features & ~image.features()
        if off:
            image.update_features(off, True)
            image.rebuild_object_map()
