"""Image specs in Ceph's familiar form: ``POOL/IMAGE[@SNAP]``, or ``IMAGE[@SNAP]`` in the default pool.

Validation is strict on purpose: a name that Ceph would take but a shell, a
libvirt XML attribute or a human would misread (``rbd/../x``, ``a@b@c``, a
space, a control character) is refused before anything touches the cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidSpecError

#: the one pattern of a name virtrbd accepts for a pool, image, snapshot, cephx user or libvirt object
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$")


def is_valid_name(name: str) -> bool:
    """Letters, digits, '_', '.', '+', '-', not starting with '.' or '-', at most 255 characters."""
    return bool(_NAME.match(name or ""))


def check_name(kind: str, name: str) -> str:
    """``name`` when it is a valid pool, image or snapshot name; else a one-line InvalidSpecError."""
    if not is_valid_name(name):
        shown = name if name and name.isprintable() else repr(name)
        raise InvalidSpecError(
            f"invalid {kind} name {shown!r}: use letters, digits, '_', '.', '+', '-' "
            f"(not starting with '.' or '-'), at most 255 characters")
    return name


@dataclass(frozen=True, order=True)
class ImageSpec:
    pool: str
    image: str
    snapshot: str | None = None

    def __post_init__(self) -> None:
        check_name("pool", self.pool)
        check_name("image", self.image)
        if self.snapshot is not None:
            check_name("snapshot", self.snapshot)

    @classmethod
    def parse(cls, text: str, default_pool: str = "rbd") -> ImageSpec:
        if not isinstance(text, str) or not text.strip():
            raise InvalidSpecError("empty image spec (expected POOL/IMAGE[@SNAP])")
        if text.count("/") > 1 or text.count("@") > 1:
            raise InvalidSpecError(f"invalid image spec {text!r}: expected POOL/IMAGE[@SNAP]")
        head, _, snapshot = text.partition("@")
        pool, sep, image = head.rpartition("/")
        if sep and not pool:
            raise InvalidSpecError(f"invalid image spec {text!r}: empty pool name")
        if "@" in text and not snapshot:
            raise InvalidSpecError(f"invalid image spec {text!r}: empty snapshot name after '@'")
        return cls(pool or default_pool, image, snapshot or None)

    @property
    def image_spec(self) -> ImageSpec:
        """The same image without the snapshot."""
        return ImageSpec(self.pool, self.image)

    @property
    def snap(self) -> str:
        """The snapshot's name, for operations that need one (an InvalidSpecError for a bare image)."""
        if self.snapshot is None:
            raise InvalidSpecError(f"{self}: name a snapshot (POOL/IMAGE@SNAP)")
        return self.snapshot

    def at(self, snapshot: str) -> ImageSpec:
        return ImageSpec(self.pool, self.image, snapshot)

    def __str__(self) -> str:
        return f"{self.pool}/{self.image}" + (f"@{self.snapshot}" if self.snapshot else "")
