"""What the layering tests share: names for one test's images, and reading and writing them."""

from __future__ import annotations

import hashlib
import uuid

import pytest

MiB = 1 << 20


@pytest.fixture
def names(storage):
    """Unique image names for one test; everything made under them is removed afterwards."""
    prefix = f"l{uuid.uuid4().hex[:8]}"
    made = []

    def name(suffix: str) -> str:
        made.append(f"{prefix}-{suffix}")
        return made[-1]

    yield name
    # children before parents: flatten whatever still depends on something, then remove
    for image in reversed(made):
        if storage.image_exists(image):
            storage.remove_image(image, with_snapshots=True, flatten_children=True)


def write(storage, image: str, offset: int, data: bytes) -> None:
    with storage.cluster.image("rbd", image) as img:
        img.write(data, offset)


def read_all(storage, spec: str) -> bytes:
    image, _, snap = spec.partition("@")
    with storage.cluster.image("rbd", image, snapshot=snap or None, read_only=True) as img:
        return img.read(0, img.size())


def digest(storage, spec: str) -> str:
    return hashlib.sha256(read_all(storage, spec)).hexdigest()


def golden(storage, names, size: int = 16 * MiB) -> str:
    base = names("golden")
    storage.create_image(base, size)
    write(storage, base, 0, b"golden boot sector".ljust(512, b"\0"))
    return str(storage.make_golden(base))
