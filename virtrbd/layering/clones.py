"""Copy-on-write clones of a snapshot, one or a fleet, within the clone-depth limit; flatten.

A clone either exists complete or not at all: when a resize or flatten that
belongs to the same request fails, the new child is removed again.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack

from .. import errors
from ..ceph import parent_of, translated
from ..ceph.image import OBJECT_MAP_FEATURES
from ..progress import Progress
from ..spec import ImageSpec
from .base import FLATTEN_MARK, _metadata, _SnapshotFacts
from .results import CloneResult
from .snapshots import Snapshots

log = logging.getLogger(__name__)


class Clones(Snapshots):
    """Clones and flatten."""

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
        multiplies the rate (docs/performance.md).  Every clone is
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
