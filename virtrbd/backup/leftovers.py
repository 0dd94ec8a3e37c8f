"""What killed restores leave behind: temporary images, found by name and removed once nobody has them open."""

from __future__ import annotations

import logging
import os
import time

from ..ceph import Cluster, translated
from ..errors import BusyError, NotFoundError, VirtrbdError
from ..spec import check_name
from .formats import manifest as manifests

log = logging.getLogger(__name__)

TEMP_IMAGE_MARK = ".virtrbd-restore-"


REPLACED_IMAGE_MARK = ".virtrbd-replaced-"


_TEMP_TOKEN_HEX = 8


def temp_image_name(name: str, mark: str = TEMP_IMAGE_MARK) -> str:
    """``NAME.virtrbd-restore-XXXXXXXX``: the image a restore into ``name`` writes (a long name is cut to fit)."""
    token = os.urandom(_TEMP_TOKEN_HEX // 2).hex()
    return check_name("image", name[:255 - len(mark) - _TEMP_TOKEN_HEX] + mark + token)


def is_temp_image(candidate: str) -> bool:
    """``candidate`` is a name temp_image_name makes: a target, TEMP_IMAGE_MARK, 8 lowercase hex digits."""
    target, mark, token = candidate.rpartition(TEMP_IMAGE_MARK)
    return bool(target and mark) and manifests.is_lower_hex(token, _TEMP_TOKEN_HEX)


#: seconds a temporary image must stay without a watcher to count as a killed restore's: a running
#: restore leaves its image unwatched only for milliseconds, between creating it and opening it (and,
#: when the restore settings go into the image as metadata, between the two opens that takes)
STALE_GRACE = 3.0


def remove_stale_temp_images(cluster: Cluster, pool: str, *, names: list[str] | None = None,
                             grace: float = STALE_GRACE) -> list[str]:
    """Remove the temporary images that killed restores left in ``pool``; their names.

    A restore removes its temporary image on every path it lives through;
    SIGKILL or a power cut leaves it.  Any later restore into the pool removes
    such images once nobody has them open, checked twice ``grace`` apart: a
    restore running now holds its image open from just after creating it until
    it has renamed it (but for milliseconds, see STALE_GRACE); a killed one
    keeps its watch until the OSDs expire it (30 s by default), so its image
    waits for a later run.  Best effort: an image that cannot be inspected or
    removed is logged and left, and the restore goes on.  ``names``: the
    pool's images, when the caller has just listed them.
    """
    candidates = [n for n in (names if names is not None else cluster.image_names(pool)) if is_temp_image(n)]
    candidates = [name for name in candidates if unwatched(cluster, pool, name)]
    if not candidates:
        return []
    time.sleep(grace)
    removed = []
    for name in candidates:
        if not unwatched(cluster, pool, name):
            continue
        try:
            remove_image(cluster, pool, name)
        except (NotFoundError, BusyError):
            continue                  # another restore removed it first, or a client opened it meanwhile
        except VirtrbdError as exc:
            log.warning("could not remove %s/%s, left by a restore that was killed: %s", pool, name, exc)
            continue
        log.info("removed %s/%s, left by a restore that was killed", pool, name)
        removed.append(name)
    return removed


def in_use(cluster: Cluster, pool: str, name: str) -> bool:
    """Whether a client has the image open (a watch on it)."""
    with cluster.image(pool, name, read_only=True) as image, translated(f"inspecting {pool}/{name}"):
        return bool(list(image.watchers_list()))


def unwatched(cluster: Cluster, pool: str, name: str) -> bool:
    """Whether the image exists and no client has it open (False when that cannot be told)."""
    try:
        return not in_use(cluster, pool, name)
    except NotFoundError:
        return False
    except VirtrbdError as exc:
        log.warning("could not inspect %s/%s, which looks left by a restore that was killed: %s", pool, name, exc)
        return False


def remove_image(cluster: Cluster, pool: str, name: str) -> None:
    """Remove an image we created, its snapshots first."""
    with cluster.image(pool, name) as image, translated(f"removing snapshots of {pool}/{name}"):
        for snap in list(image.list_snaps()):
            image.remove_snap(snap["name"])
    cluster.remove(pool, name)
