"""Safe deletion: every reason to refuse named before anything changes; the flags that resolve each."""

from __future__ import annotations

from .. import errors
from ..ceph import translated
from ..spec import ImageSpec
from .clones import Clones, flatten_safely
from .results import Dependent, RemoveResult


class Removal(Clones):
    """Remove an image, its snapshots and the dependence of its clones, or refuse with the true cause."""

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


def _dependents_text(dependents: list[Dependent]) -> str:
    by_snapshot: dict[str, list[str]] = {}
    for d in dependents:
        by_snapshot.setdefault(d.snapshot, []).append(str(d))
    return "; ".join(f"{', '.join(children)} (on snapshot {snap})" for snap, children in by_snapshot.items())
