"""The shapes of image the backup benchmark measures, written into a lab through librbd.

Each shape is an image with two snapshots: ``s1``, the shape itself, and
``s2``, after a scattered change of 4 KiB writes.  Full backups and restores
are measured on ``@s2``, incrementals from ``s1`` to ``s2``.  Real VM disks look
like the scattered shapes far more often than like one contiguous run, so most
of them are scattered.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 4096


@dataclass
class Shape:
    name: str
    describe: str
    size: int
    build: Callable[[Writer, random.Random], None]     # writes s1's content
    change_bytes: int                                  # rewritten between s1 and s2, in 4 KiB writes
    golden: bool = False                               # the image is a clone of a golden image

    @property
    def changed_share(self) -> float:
        return self.change_bytes / self.size


class Writer:
    """Writes into an open image with up to 32 writes in flight."""

    def __init__(self, image):
        self.image = image
        self._cond = threading.Condition()
        self._inflight = 0
        self.errors: list[int] = []

    def write(self, offset: int, data: bytes) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._inflight < 32)
            self._inflight += 1
        self.image.aio_write(data, offset, self._done)

    def _done(self, completion) -> None:
        with self._cond:
            if completion.get_return_value() < 0:
                self.errors.append(completion.get_return_value())
            self._inflight -= 1
            self._cond.notify_all()

    def drain(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._inflight == 0)
        if self.errors:
            raise OSError(f"writes failed: {self.errors[:3]}")

    def fill(self, extents: Iterable[tuple[int, int]], rng: random.Random, piece: int = 4 * MiB) -> None:
        for offset, length in extents:
            for at in range(offset, offset + length, piece):
                self.write(at, rng.randbytes(min(piece, offset + length - at)))


def contiguous_half(w: Writer, rng: random.Random) -> None:
    w.fill([(0, w.image.size() // 2)], rng)


def scattered_pieces(share: float, piece: int) -> Callable[[Writer, random.Random], None]:
    def build(w: Writer, rng: random.Random) -> None:
        slots = w.image.size() // piece
        w.fill(((slot * piece, piece) for slot in sorted(rng.sample(range(slots), int(slots * share)))), rng, piece)
    return build


def fully_random(w: Writer, rng: random.Random) -> None:
    w.fill([(0, w.image.size())], rng)


def shapes(size: int, *, thin_size: int | None = None) -> list[Shape]:
    """The matrix's shapes at ``size`` (and the thin one at ``thin_size``, where it is measured)."""
    one = -(-(size // 100 + 1) // BLOCK) * BLOCK         # 1 % of the image, in whole blocks, rounded up
    found = [
        Shape("half", "first half written in one run", size, contiguous_half, one),
        Shape("scattered", "20 % of the 1 MiB pieces at random", size, scattered_pieces(0.2, MiB), one),
        Shape("clone", "clone of a half-written golden image", size, lambda w, rng: None, one, golden=True),
        Shape("random", "every byte random", size, fully_random, one),
    ]
    if thin_size:
        found.append(Shape("thin", "1 % of it written in 1 MiB pieces; 1 % of that changed", thin_size,
                           scattered_pieces(0.01, MiB), thin_size // 10000))
    return found


def scattered_change(w: Writer, rng: random.Random, nbytes: int) -> int:
    """``nbytes`` in 4 KiB writes at random blocks; the bytes really changed (distinct blocks)."""
    blocks = w.image.size() // BLOCK
    chosen = sorted(rng.sample(range(blocks), nbytes // BLOCK))
    for block in chosen:
        w.write(block * BLOCK, rng.randbytes(BLOCK))
    w.drain()
    return len(chosen) * BLOCK


def make(cluster, shape: Shape, name: str, seed: int = 1) -> int:
    """``name`` in pool rbd with snapshots s1 (the shape) and s2 (after the change); the bytes changed."""
    import rbd
    rng = random.Random(seed)
    with cluster.ioctx("rbd") as ioctx:
        if shape.golden:
            golden = f"{name}-golden"
            rbd.RBD().create(ioctx, golden, shape.size, old_format=False)
            with rbd.Image(ioctx, golden) as image:
                writer = Writer(image)
                contiguous_half(writer, rng)
                writer.drain()
                image.create_snap("base")
                image.protect_snap("base")
            rbd.RBD().clone(ioctx, golden, "base", ioctx, name)
        else:
            rbd.RBD().create(ioctx, name, shape.size, old_format=False)
        with rbd.Image(ioctx, name) as image:
            writer = Writer(image)
            shape.build(writer, rng)
            writer.drain()
            image.create_snap("s1")
            changed = scattered_change(writer, rng, shape.change_bytes)
            image.create_snap("s2")
    return changed


def remove(cluster, shape: Shape, name: str) -> None:
    """The shape's image, its snapshots and its golden image."""
    import rbd
    with cluster.ioctx("rbd") as ioctx:
        for image_name in (name, f"{name}-golden") if shape.golden else (name,):
            with rbd.Image(ioctx, image_name) as image:
                for snap in list(image.list_snaps()):
                    if image.is_protected_snap(snap["name"]):
                        image.unprotect_snap(snap["name"])
                    image.remove_snap(snap["name"])
            rbd.RBD().remove(ioctx, image_name)


def allocated(cluster, name: str, snapshot: str, since: str | None = None) -> int:
    """What librbd reports allocated in ``name@snapshot`` (or changed since ``since``): data extents' bytes."""
    total = 0

    def count(offset: int, length: int, exists: bool) -> int:
        nonlocal total
        if exists:
            total += length
        return 0

    with cluster.image("rbd", name, snapshot=snapshot, read_only=True) as image:
        image.diff_iterate(0, image.size(), since, count, include_parent=True, whole_object=False)
    return total
