"""Snapshots that stay in Ceph, and golden images: a protected snapshot recorded in the image's metadata."""

from __future__ import annotations

import errno
import json
import logging

from .. import errors
from ..ceph import translated
from ..progress import Progress
from ..spec import ImageSpec
from .base import DEFAULT_GOLDEN_SNAPSHOT, GOLDEN_KEY, ConsistencyRecord
from .inspection import Inspection

log = logging.getLogger(__name__)


class Snapshots(Inspection):
    """Create, protect, unprotect, remove and roll back snapshots; make golden images."""

    def create_snapshot(self, snap: ImageSpec) -> None:
        with self.cluster.image(snap.pool, snap.image) as image, translated(f"snapshot {snap}"):
            image.create_snap(snap.snap)

    def remove_snapshot(self, snap: ImageSpec, *, force: bool = False) -> None:
        """Remove a snapshot nothing depends on; a protected one only with ``force`` (it is unprotected first)."""
        with self.cluster.image(snap.pool, snap.image) as image:
            self._refuse_with_clones(snap, image)
            with translated(f"removing snapshot {snap}"):
                if image.is_protected_snap(snap.snap):
                    if not force:
                        raise errors.BusyError(f"snapshot {snap}: is protected; unprotect it first "
                                               f"(or use force / --force)")
                    image.unprotect_snap(snap.snap)
                image.remove_snap(snap.snap)
            _drop_record(image, snap.snap)
        self._forget(snap)

    def protect_snapshot(self, snap: ImageSpec) -> bool:
        """Protect a snapshot; True when this call protected it, False when it already was (idempotent)."""
        with self.cluster.image(snap.pool, snap.image) as image:
            self._snap_id(snap, image)
            return self._protect(snap, image)

    def _protect(self, snap: ImageSpec, image) -> bool:
        what = f"protecting snapshot {snap}"
        with translated(what):
            if image.is_protected_snap(snap.snapshot):
                return False
        try:
            with translated(what):
                image.protect_snap(snap.snapshot)
        except errors.BusyError:
            # another agent protected it at the same moment: that is what we wanted
            with translated(what):
                if image.is_protected_snap(snap.snapshot):
                    return False
            raise
        return True

    def unprotect_snapshot(self, snap: ImageSpec) -> bool:
        """Unprotect a snapshot no clone depends on; False when it was not protected."""
        with self.cluster.image(snap.pool, snap.image) as image:
            self._refuse_with_clones(snap, image)
            with translated(f"unprotecting snapshot {snap}"):
                if not image.is_protected_snap(snap.snap):
                    return False
                image.unprotect_snap(snap.snap)
        self._forget(snap)
        return True

    def rollback(self, snap: ImageSpec, *, force: bool = False,
                 progress: Progress | None = None) -> None:
        """Roll the image back to the snapshot; refused while a client has it open, unless ``force``."""
        with self.cluster.image(snap.pool, snap.image, read_only=True) as image:
            self._snap_id(snap, image)
            watchers = self._watchers(snap.image_spec, image)
        if watchers and not force:
            raise errors.BusyError(f"image {snap.image_spec}: is open by {len(watchers)} client(s) "
                                   f"({', '.join(watchers)}); stop them first or force the rollback")
        with self.cluster.image(snap.pool, snap.image) as image:
            try:
                with translated(f"rolling back to {snap}"):
                    if progress is None:
                        image.rollback_to_snap(snap.snap)
                    else:
                        image.rollback_to_snap(snap.snap, on_progress=progress)
            except errors.CephError as exc:
                if exc.errno != errno.EROFS:  # the exclusive lock stayed with another client
                    raise
                raise errors.BusyError(f"image {snap.image_spec}: another client holds its exclusive lock "
                                       f"and did not give it up (a running VM?); stop it first",
                                       errno=exc.errno) from None

    def make_golden(self, spec: ImageSpec) -> ImageSpec:
        """Make ``spec`` a golden base: its snapshot (created when missing) protected and recorded.

        Idempotent: making an image golden again with the same snapshot changes nothing.
        """
        snap = spec if spec.snapshot else spec.at(DEFAULT_GOLDEN_SNAPSHOT)
        with self.cluster.image(snap.pool, snap.image) as image:
            with translated(f"snapshot {snap}"):
                if not image.snap_exists(snap.snap):
                    image.create_snap(snap.snap)
            self._protect(snap, image)
            with translated(f"recording {snap} as golden"):
                image.metadata_set(GOLDEN_KEY, json.dumps({"snapshot": snap.snapshot, "image_id": image.id()}))
        return snap


def _drop_record(image, snapshot: str) -> None:
    """The consistency record of a removed snapshot goes with it (a stale one is ignored anyway: its id)."""
    try:
        image.metadata_remove(ConsistencyRecord.key(snapshot))
    except KeyError:
        pass
    except Exception as exc:            # noqa: BLE001 - the snapshot is gone, which is what was asked
        log.debug("removing the consistency record of %s: %s", snapshot, exc)
