"""What layering reports: snapshots, dependents, an image's details, the outcome of a clone or a removal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..spec import ImageSpec


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
    consistency: str | None = None      # "application" or "crash" for a domain's snapshot; None: not recorded

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
