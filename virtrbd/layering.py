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
"""

from __future__ import annotations

import errno
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime

from . import errors
from .ceph import Cluster, parent_of, translated
from .ceph.image import FEATURE_NAMES, OBJECT_MAP_FEATURES, SNAP_NAMESPACE_TRASH, SNAP_NAMESPACE_USER
from .progress import Progress
from .spec import ImageSpec

log = logging.getLogger(__name__)

#: image metadata key naming the golden snapshot of a golden image
GOLDEN_KEY = "virtrbd.golden"
DEFAULT_GOLDEN_SNAPSHOT = "golden"
#: libvirt's vol-clone protects a snapshot named libvirt-<random number> on the source
_LIBVIRT_SNAPSHOT = re.compile(r"^libvirt-\d+$")

#: image metadata set while a flatten runs; found by the next flatten, it means "interrupted"
FLATTEN_MARK = "virtrbd.flattening"


@dataclass(frozen=True)
class Dependent:
    """A clone that depends on a snapshot of the image in question."""

    image: ImageSpec
    snapshot: str           # the parent snapshot it hangs on
    in_trash: bool = False
    image_id: str = ""

    def __str__(self) -> str:
        return f"{self.image}" + (" (in the RBD trash)" if self.in_trash else "")


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    id: int
    size: int
    protected: bool
    timestamp: datetime | None
    children: int
    origin: str = "user"    # "user", "golden" (virtrbd) or "libvirt" (vol-clone's libvirt-<n>)

    def describe(self) -> str:
        notes = [n for n in ("protected" if self.protected else "",
                             {"golden": "golden", "libvirt": "made by libvirt's vol-clone"}.get(self.origin, ""),
                             f"{self.children} clone(s)" if self.children else "") if n]
        return self.name + (f" ({', '.join(notes)})" if notes else "")


@dataclass(frozen=True)
class ImageInfo:
    image: ImageSpec
    id: str
    size: int
    object_size: int
    features: tuple[str, ...]
    created: datetime | None
    parent_chain: tuple[ImageSpec, ...]   # nearest parent first, each with its snapshot
    snapshots: tuple[SnapshotInfo, ...]
    dependents: tuple[Dependent, ...]
    golden_snapshot: str | None
    watchers: int


@dataclass(frozen=True)
class CloneResult:
    image: ImageSpec
    parent: ImageSpec
    depth: int              # ancestors of the new image (0 once flattened)
    flattened: bool
    note: str = ""
    existed: bool = False   # exist_ok found it made already (a rerun after a failure)


@dataclass(frozen=True)
class RemoveResult:
    image: ImageSpec
    snapshots_removed: tuple[str, ...] = ()
    children_flattened: tuple[ImageSpec, ...] = ()
    trashed: bool = False


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


class Layering:
    """Layering operations on one connected cluster."""

    def __init__(self, cluster: Cluster, *, max_clone_depth: int = 5):
        self.cluster = cluster
        self.max_clone_depth = max_clone_depth
        self._cache = _Cache()

    # --- snapshots -----------------------------------------------------------------

    def create_snapshot(self, snap: ImageSpec) -> None:
        with self.cluster.image(snap.pool, snap.image) as image, translated(f"snapshot {snap}"):
            image.create_snap(snap.snap)

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
                result.append(SnapshotInfo(
                    name=name, id=snap["id"], size=snap["size"], protected=bool(image.is_protected_snap(name)),
                    timestamp=image.get_snap_timestamp(snap["id"]),
                    children=len(self._children_at(spec, image, snap["id"])), origin=origin))
        return result

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
                if exc.errno != 30:  # EROFS: the exclusive lock stayed with another client
                    raise
                raise errors.BusyError(f"image {snap.image_spec}: another client holds its exclusive lock "
                                       f"and did not give it up (a running VM?); stop it first",
                                       errno=exc.errno) from None

    # --- golden images -----------------------------------------------------------------

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

    # --- clones --------------------------------------------------------------------------

    def clone(self, parent: ImageSpec, child: ImageSpec, *, size: int | None = None, flatten: bool = False,
              exist_ok: bool = False, on_created: Callable[[object], None] | None = None) -> CloneResult:
        """A copy-on-write clone of ``parent`` (POOL/IMAGE@SNAP) named ``child``.

        The clone is resized when ``size`` is given (never below the snapshot's
        size), and flattened when asked or when it would have more than
        ``max_clone_depth`` ancestors.  ``on_created`` is called with the open
        child image before it is closed (the hook records its metadata there).
        If anything after the clone itself fails, the child is removed again.
        ``exist_ok`` makes a rerun converge: a child that is already a clone of
        ``parent`` is reported, not refused; any other image of that name is.
        """
        facts = self._snapshot_facts(parent)
        if size is not None and size < facts.size:
            raise errors.UsageError(f"clone {child}: {size} bytes is smaller than its parent {parent} "
                                    f"({facts.size} bytes); clones can only grow")
        depth = facts.depth + 1
        too_deep = depth > self.max_clone_depth
        try:
            self._clone(parent, child, facts)
        except errors.AlreadyExistsError:
            if not exist_ok:
                raise
            return self._existing_clone(parent, child, flattened=flatten or too_deep, size=size,
                                        on_created=on_created)
        resize = size is not None and size != facts.size
        if not (resize or flatten or too_deep or on_created):
            return CloneResult(image=child, parent=parent, depth=depth, flattened=False)
        try:
            with self.cluster.image(child.pool, child.image) as image:
                if resize and size is not None:
                    with translated(f"resizing clone {child}"):
                        image.resize(size)
                if flatten or too_deep:
                    flatten_safely(image, f"flattening clone {child}")
                if on_created is not None:
                    on_created(image)
        except BaseException:
            self._remove_quietly(child)
            raise
        note = ""
        if too_deep and not flatten:
            note = (f"flattened: it would have had {depth} ancestors, more than max_clone_depth "
                    f"{self.max_clone_depth}")
            log.warning("clone %s %s", child, note)
        flattened = flatten or too_deep
        return CloneResult(image=child, parent=parent, depth=0 if flattened else depth, flattened=flattened,
                           note=note)

    def _existing_clone(self, parent: ImageSpec, child: ImageSpec, *, flattened: bool, size: int | None,
                        on_created: Callable[[object], None] | None) -> CloneResult:
        """``child`` exists: the result of an earlier run when it is a clone of ``parent`` (or was to be flattened)."""
        with ExitStack() as opened:
            try:
                image = opened.enter_context(self.cluster.image(child.pool, child.image, read_only=True))
            except errors.NotFoundError as exc:
                if exc.missing != "image":
                    raise
                image = None           # named in the pool's directory, but no image behind the name
            chain = self._parent_chain(image) if image is not None else []
            kept = self._why_not_remains(child, image) if image is not None and not chain else None
        if not chain and kept is None:
            # a clone cut short before librbd attached the parent, and not rolled back (the cluster
            # was gone): no data, no snapshots, nobody using it — replace it with the clone asked for
            log.warning("image %s: the empty remains of an interrupted clone; making the clone again", child)
            self._remove_quietly(child)
            return self.clone(parent, child, size=size, flatten=flattened, on_created=on_created)
        if flattened and chain and chain[0] == parent:
            # the earlier run made the clone but its flatten did not finish: finish it
            with self.cluster.image(child.pool, child.image) as image:
                flatten_safely(image, f"flattening clone {child}")
            chain = []
        if (chain and chain[0] == parent) or (flattened and not chain):
            return CloneResult(image=child, parent=parent, depth=len(chain), flattened=not chain,
                               note="existed already", existed=True)
        why = f" (its parent is {chain[0]})" if chain else f" ({kept})"
        raise errors.AlreadyExistsError(f"image {child}: already exists but is not a clone of {parent}{why}",
                                        errno=errno.EEXIST)

    def _why_not_remains(self, spec: ImageSpec, image) -> str | None:
        """None for the empty remains of an interrupted clone (no snapshot, no client, not a byte of
        its own); otherwise what makes the image something to keep."""
        with translated(f"inspecting {spec}"):
            if list(image.list_snaps()):
                return "it has snapshots"
            watchers = list(image.watchers_list())
            if watchers:
                # an interrupted clone's own watch lingers until the OSDs expire it (30 s by default)
                return f"a client has it open: {', '.join(w['addr'] for w in watchers)}"
            extents = []
            image.diff_iterate(0, image.size(), None, lambda offset, length, exists: extents.append(exists),
                               include_parent=False, whole_object=True)
        return "it holds data of its own" if any(extents) else None

    def clone_many(self, parent: ImageSpec, children: list[ImageSpec], *, size: int | None = None,
                   flatten: bool = False, exist_ok: bool = False, workers: int = 8) -> list[CloneResult]:
        """Many clones of one snapshot, several in flight at once.

        A clone is a chain of round trips to the OSDs, so a handful in parallel
        multiplies the rate (on the lab about 2x with 8 workers).  Every clone is
        complete or absent; if some fail, the others stay and the first failure
        is raised saying how many were made.
        """
        seen = set()
        for child in children:
            if child in seen:
                raise errors.UsageError(f"clone batch names {child} twice")
            seen.add(child)
        self._snapshot_facts(parent)  # read once, before the workers race for it
        results: list[CloneResult | None] = [None] * len(children)
        failures: list[tuple[int, errors.VirtrbdError]] = []
        failed = threading.Event()

        def one(index: int) -> None:
            if failed.is_set():
                return  # after a failure (a dead cluster, often) no new clone is started
            try:
                results[index] = self.clone(parent, children[index], size=size, flatten=flatten,
                                            exist_ok=exist_ok)
            except errors.VirtrbdError as exc:
                failures.append((index, exc))
                failed.set()

        from concurrent.futures import ThreadPoolExecutor  # here: the hook imports this module too
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="virtrbd-clone") as pool:
            list(pool.map(one, range(len(children))))
        if failures:
            index, first = min(failures, key=lambda failure: failure[0])
            made = sum(r is not None for r in results)
            untried = len(children) - made - len(failures)
            others = sorted(str(children[i]) for i, _ in failures if i != index)
            rest = (f"; also failed: {', '.join(others)}" if others else "") + (f"; {untried} not tried" if untried
                                                                              else "")
            raise type(first)(f"{first} ({made} of {len(children)} clones made{rest}); a failed clone may be "
                              f"left half made: rerun with exist_ok", errno=first.errno)
        return [r for r in results if r is not None]

    def _clone(self, parent: ImageSpec, child: ImageSpec, facts: _SnapshotFacts) -> None:
        """Clone, protecting the snapshot first when the cluster's clone format (v1) needs it."""
        for attempt in (1, 2):
            try:
                self.cluster.clone(parent, child)
                return
            except errors.CephError as exc:
                # clone v1 refuses an unprotected parent snapshot with EINVAL
                if attempt == 2 or exc.errno != errno.EINVAL or facts.protected:
                    raise
                with self.cluster.image(parent.pool, parent.image) as image:
                    self._protect(parent, image)
                facts.protected = True

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

    def _parent_chain(self, image) -> list[ImageSpec]:
        return self.cluster.parent_chain(image)

    def flatten(self, spec: ImageSpec, *, progress: Progress | None = None) -> bool:
        """Copy the parent's data into the image so it stands alone; False when it had no parent."""
        with self.cluster.image(spec.pool, spec.image) as image:
            if parent_of(image) is None:
                with translated(f"flattening {spec}"):
                    if _metadata(image, FLATTEN_MARK) is not None:
                        image.metadata_remove(FLATTEN_MARK)   # a flatten that finished but could not say so
                return False
            flatten_safely(image, f"flattening {spec}", progress)
        return True

    # --- dependents ------------------------------------------------------------------------

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

    # --- information ------------------------------------------------------------------------

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

    # --- safe deletion -----------------------------------------------------------------------

    def remove(self, spec: ImageSpec, *, with_snapshots: bool = False, flatten_children: bool = False,
               trash: bool = False) -> RemoveResult:
        """Remove an image, refusing with every true cause before anything is changed.

        Refused while a client has it open; while clones depend on it (unless
        ``flatten_children``, which flattens them first); while it has snapshots
        (unless ``with_snapshots``, which removes them — protected ones are
        unprotected, libvirt's ``libvirt-<n>`` ones included).  ``trash`` moves
        it to the RBD trash instead of deleting it.
        """
        with self.cluster.image(spec.pool, spec.image, read_only=True) as image:
            watchers = self._watchers(spec, image)
            snapshots = self._snapshots(spec, image)
            dependents = list(self._all_children(spec, image))
        if watchers:
            raise errors.BusyError(f"image {spec}: is open by {len(watchers)} client(s) ({', '.join(watchers)}); "
                                   f"stop the VM or agent using it first")
        if dependents and not flatten_children:
            raise errors.HasDependentsError(
                f"image {spec}: has clones: {_dependents_text(dependents)}; flatten them (--flatten-children) "
                f"or remove them first")
        if snapshots and not with_snapshots:
            raise errors.HasSnapshotsError(
                f"image {spec}: has snapshots: {', '.join(s.describe() for s in snapshots)}; "
                f"remove them with --with-snapshots")

        flattened = []
        for dependent in dependents:
            self._flatten_dependent(dependent)
            flattened.append(dependent.image)
        removed = []
        if snapshots:
            with self.cluster.image(spec.pool, spec.image) as image:
                for snap in snapshots:
                    with translated(f"removing snapshot {spec.at(snap.name)}"):
                        if image.is_protected_snap(snap.name):
                            image.unprotect_snap(snap.name)
                        image.remove_snap(snap.name)
                    self._forget(spec.at(snap.name))
                    removed.append(snap.name)
        if trash:
            self.cluster.move_to_trash(spec.pool, spec.image)
        else:
            self.cluster.remove(spec.pool, spec.image)
        return RemoveResult(spec, tuple(removed), tuple(flattened), trash)

    def _flatten_dependent(self, dependent: Dependent) -> None:
        child = dependent.image
        if dependent.in_trash:
            opened = self.cluster.image(child.pool, image_id=dependent.image_id)
        else:
            opened = self.cluster.image(child.pool, child.image)
        with opened as image:
            flatten_safely(image, f"flattening clone {dependent}")

    def _remove_quietly(self, spec: ImageSpec) -> None:
        try:
            self.cluster.remove(spec.pool, spec.image, what=f"removing half-made {spec}")
        except errors.VirtrbdError as exc:
            log.error("could not remove the half-made clone %s: %s", spec, exc)


def flatten_safely(image, what: str, progress: Progress | None = None) -> None:
    """Flatten an open image so that an interrupted flatten cannot lose data when it is run again.

    librbd marks an object as existing in the object map before the copy-up
    that writes it; a flatten cut short by a client-side timeout (an OSD outage)
    can leave objects marked that were never written, and a later flatten then
    skips them and detaches the parent: their data is gone (seen in the lab,
    where rebuild_object_map did not repair the map).  So every flatten first
    leaves a mark in the image's metadata and removes it when done; a flatten
    that finds the mark of an interrupted one works without the object map and
    rebuilds it afterwards.
    """
    with translated(what):
        interrupted = _metadata(image, FLATTEN_MARK) is not None
        image.metadata_set(FLATTEN_MARK, "in progress")
        object_map = image.features() & OBJECT_MAP_FEATURES if interrupted else 0
        if object_map:
            log.warning("%s: an earlier flatten was interrupted; this one does not trust the object map", what)
            image.update_features(object_map, False)
        if progress is None:
            image.flatten()
        else:
            image.flatten(on_progress=progress)
        if object_map:
            image.update_features(object_map, True)
            image.rebuild_object_map()
        image.metadata_remove(FLATTEN_MARK)


def _metadata(image, key: str) -> str | None:
    """An image-metadata value, or None when the key is not set."""
    try:
        return image.metadata_get(key)
    except KeyError:
        return None


def _names(dependents: list[Dependent]) -> str:
    return ", ".join(str(d) for d in dependents)


def _dependents_text(dependents: list[Dependent]) -> str:
    by_snapshot: dict[str, list[str]] = {}
    for d in dependents:
        by_snapshot.setdefault(d.snapshot, []).append(str(d))
    return "; ".join(f"{', '.join(children)} (on snapshot {snap})" for snap, children in by_snapshot.items())
