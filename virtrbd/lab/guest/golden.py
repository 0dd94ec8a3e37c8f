"""Golden images that hold a filesystem: ext4 made on the host (``mkfs.ext4 -d``), written through librbd.

Without a folder of the user's, the filesystem holds a known set of files and
``CHECKSUMS`` (``sha256sum`` format, paths relative to the filesystem's root),
so a guest can check them with ``sha256sum -c`` and a test can read them back
on the host with ``debugfs``.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import tempfile
from pathlib import Path

from ...backup.stream import is_zero
from ...errors import LabError
from ...spec import ImageSpec
from ...storage import Storage

CHUNK = 4 << 20
#: the default set: name → content (seeded, so every lab writes the same bytes)
DEFAULT_FILES = {
    "hello.txt": b"a virtrbd golden image: an ext4 filesystem written through librbd\n",
    "data/one-mebibyte.bin": random.Random(1).randbytes(1 << 20),
    "data/odd-size.bin": random.Random(2).randbytes(65536 + 7),
    "data/sub/empty": b"",
}


def default_tree(folder: Path) -> Path:
    """The default set of files and its CHECKSUMS, written under ``folder``."""
    for name, data in DEFAULT_FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (folder / "CHECKSUMS").write_text("".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                                              for name, data in sorted(DEFAULT_FILES.items())))
    return folder


def make_filesystem(raw: Path, size: int, tree: Path) -> None:
    """A file of ``size`` bytes holding an ext4 filesystem with ``tree``'s files."""
    with open(raw, "wb") as f:
        f.truncate(size)
    done = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "virtrbd-golden", "-E", "root_owner=0:0",
                           "-d", str(tree), str(raw)], capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["mkfs.ext4 failed"])[-1]
        raise LabError(f"making an ext4 filesystem of {size} bytes from {tree}: {why}")


def create_golden_filesystem(storage: Storage, spec: ImageSpec, size: int, source: Path | None = None) -> ImageSpec:
    """A new image ``spec`` holding an ext4 filesystem (``source``'s files, or the default set), made golden.

    Returns the golden snapshot.  A failure after the image was made removes it again.
    """
    if source is not None and not source.is_dir():
        raise LabError(f"{source}: not a folder")
    with tempfile.TemporaryDirectory(prefix="virtrbd-golden-") as scratch:
        tree = source or default_tree(Path(scratch) / "tree")
        raw = Path(scratch) / "filesystem.raw"
        make_filesystem(raw, size, tree)
        storage.create_image(spec, size)
        try:
            _write_image(storage, spec, raw)
            return storage.make_golden(spec)
        except BaseException:
            storage.remove_image(spec, with_snapshots=True)
            raise


def _write_image(storage: Storage, spec: ImageSpec, raw: Path) -> None:
    """The file's chunks that hold a byte other than zero, written at their offsets (the image stays sparse)."""
    with open(raw, "rb") as f, storage.cluster.image(spec.pool, spec.image) as image:
        offset = 0
        while chunk := f.read(CHUNK):
            if not is_zero(chunk):
                image.write(chunk, offset)
            offset += len(chunk)
        image.flush()
