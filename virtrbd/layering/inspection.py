"""Reading what an image is: its parent chain, snapshots, clones (also those in the trash), clients, golden mark.

The refusals of the operations above are built from these facts, gathered
before anything is changed, so that a refusal names every true cause.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from .. import errors
from ..ceph import translated
from ..ceph.image import FEATURE_NAMES, SNAP_NAMESPACE_TRASH, SNAP_NAMESPACE_USER
from ..spec import ImageSpec
from .base import GOLDEN_KEY, ConsistencyRecord, LayeringBase, _metadata, _SnapshotFacts
from .results import Dependent, ImageInfo, SnapshotInfo

#: libvirt's vol-clone protects a snapshot named libvirt-<random number> on the source
_LIBVIRT_SNAPSHOT = re.compile(r"^libvirt-\d+$")


class Inspection(LayeringBase):
    """Read-only facts about images and snapshots."""

    def list_snapshots(self, spec: ImageSpec) -> list[SnapshotInfo]:
        with self.cluster.image(spec.pool, spec.image, read_only=True) as image:
            return self._snapshots(spec, image)

    def _snapshots(self, spec: ImageSpec, image) -> list[SnapshotInfo]:
        golden = self._golden_of(image)
        result = []
        with translated(f"listing snapshots of {spec}"):
            for snap in image.list_snaps():
                if snap.get("namespace", SNAP_NAMESPACE_USER) != SNAP_NAMESPACE_USER:
                    continue
                name = snap["name"]
                origin = "golden" if name == golden else "libvirt" if _LIBVIRT_SNAPSHOT.match(name) else "user"
                record = ConsistencyRecord.read(image, name, snap["id"])
                result.append(SnapshotInfo(
                    name=name, id=snap["id"], size=snap["size"], protected=bool(image.is_protected_snap(name)),
                    timestamp=image.get_snap_timestamp(snap["id"]),
                    children=len(self._children_at(spec, image, snap["id"])), origin=origin,
                    consistency=record.consistency if record else None))
        return result

    def golden_snapshot(self, spec: ImageSpec) -> str | None:
        with self.cluster.image(spec.pool, spec.image, read_only=True) as image:
            return self._golden_of(image)

    def _golden_of(self, image) -> str | None:
        """The golden snapshot recorded on this very image.

        librbd copies image metadata into clones, so the record names the image id
        it was made for: a clone's inherited copy does not make the clone golden.
        """
        text = _metadata(image, GOLDEN_KEY)
        try:
            record = json.loads(text) if text is not None else None
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("image_id") != image.id():
            return None
        return record.get("snapshot")

    def children(self, spec: ImageSpec) -> list[Dependent]:
        """Clones of one snapshot, or of every snapshot of the image (also trash-namespace ones)."""
        with self.cluster.image(spec.pool, spec.image, read_only=True) as image:
            if spec.snapshot:
                return self._children_at(spec, image, self._snap_id(spec, image))
            return list(self._all_children(spec, image))

    def _all_children(self, spec: ImageSpec, image) -> Iterator[Dependent]:
        with translated(f"listing snapshots of {spec}"):
            snaps = list(image.list_snaps())
        for snap in snaps:
            yield from self._children_at(spec, image, snap["id"], name=snap["name"])

    def _children_at(self, spec: ImageSpec, image, snap_id: int, name: str | None = None) -> list[Dependent]:
        with translated(f"listing clones of {spec}"):
            name = name or image.snap_get_name(snap_id)
            if image.snap_get_namespace_type(snap_id) == SNAP_NAMESPACE_TRASH:
                name = image.snap_get_trash_namespace(snap_id).get("original_name", name)
            image.set_snap_by_id(snap_id)
            try:
                found = list(image.list_children2())
            finally:
                image.set_snap(None)
        return [Dependent(ImageSpec(c["pool"], c["image"]), name, bool(c.get("trash")), c.get("id", ""))
                for c in found]

    def _refuse_with_clones(self, snap: ImageSpec, image) -> None:
        """A HasDependentsError naming every clone of the snapshot, if it has any (missing: NotFoundError)."""
        dependents = self._children_at(snap, image, self._snap_id(snap, image))
        if dependents:
            raise errors.HasDependentsError(f"snapshot {snap}: has clones: {_names(dependents)}; "
                                            f"flatten or remove them first")

    def _snap_id(self, snap: ImageSpec, image) -> int:
        with translated(f"snapshot {snap}"):
            for entry in image.list_snaps():
                if entry["name"] == snap.snapshot and entry.get("namespace", 0) == SNAP_NAMESPACE_USER:
                    return entry["id"]
        raise errors.NotFoundError(f"snapshot {snap}: does not exist")

    def _watchers(self, spec: ImageSpec, image) -> list[str]:
        with translated(f"listing clients of {spec}"):
            return [w["addr"] for w in image.watchers_list()]

    def info(self, spec: ImageSpec) -> ImageInfo:
        with self.cluster.image(spec.pool, spec.image, read_only=True) as image:
            with translated(f"reading image {spec}"):
                stat = image.stat()
                features = image.features()
                image_id = image.id()
                created = image.create_timestamp()
            snapshots = self._snapshots(spec, image)
            return ImageInfo(
                image=spec, id=image_id, size=stat["size"], object_size=stat["obj_size"],
                features=tuple(name for bit, name in FEATURE_NAMES.items() if features & bit),
                created=created, parent_chain=tuple(self._parent_chain(image)), snapshots=tuple(snapshots),
                dependents=tuple(self._all_children(spec, image)), golden_snapshot=self._golden_of(image),
                watchers=len(self._watchers(spec, image)))

    def _parent_chain(self, image) -> list[ImageSpec]:
        return self.cluster.parent_chain(image)

    def _snapshot_facts(self, parent: ImageSpec) -> _SnapshotFacts:
        if parent.snapshot is None:
            raise errors.InvalidSpecError(f"{parent}: clone from a snapshot (POOL/IMAGE@SNAP)")
        with self._cache.lock:
            cached = self._cache.facts.get(parent)
        if cached is not None:
            return cached
        with self.cluster.image(parent.pool, parent.image, snapshot=parent.snapshot, read_only=True) as image:
            with translated(f"reading snapshot {parent}"):
                facts = _SnapshotFacts(size=image.size(), depth=len(self._parent_chain(image)),
                                       protected=bool(image.is_protected_snap(parent.snapshot)))
        with self._cache.lock:
            self._cache.facts[parent] = facts
        return facts

    def _forget(self, snap: ImageSpec) -> None:
        with self._cache.lock:
            self._cache.facts.pop(snap, None)


def _names(dependents: list[Dependent]) -> str:
    return ", ".join(str(d) for d in dependents)
