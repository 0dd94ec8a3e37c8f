"""Fuzzing verify and restore with damaged backups: every mutant refused, in one line, quickly, leaving nothing.

Mutants of a sparse RAW backup, a QCOW2 backup with 4 KiB clusters (small tables, so mutations land on
structure) and an incremental diff, and of their manifests: header fields and table entries set to edge
values, refcount entries, diff record tags and lengths, byte flips, truncations, appended bytes, manifest
fields nulled, retyped, nudged, dropped or forged (sealed again). The judges:

- ``verify`` refuses every mutant with a ``VirtrbdError`` (never another exception), within 30 s;
- every QCOW2 mutant that ``qemu-img check`` rejects is also rejected by virtrbd's structure check alone
  (without the file checksum, as for a backup older than it), so a restore never starts from it;
- a sample is restored into a fake cluster: it fails leaving no image and no temporary image, or it
  gives back exactly the original content.

``make test`` runs a fixed budget (``VIRTRBD_FUZZ_MUTANTS``, default 2000); ``make fuzz`` a longer one.
A failure names the seed and the mutant's number, so it can be replayed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from virtrbd.backup import verify
from virtrbd.backup.formats import check_backup_file
from virtrbd.backup.formats import manifest as manifests
from virtrbd.backup.restore import plan_restore, run_restore
from virtrbd.errors import VirtrbdError
from virtrbd.spec import ImageSpec

from ..fakes import FakeCluster
from .conftest import apply_changes, scattered

MUTANTS = int(os.environ.get("VIRTRBD_FUZZ_MUTANTS", "2000"))
SEED = int(os.environ.get("VIRTRBD_FUZZ_SEED", "2026"))
EDGES = [0, 1, 7, 8, 9, 12, 21, 22, 63, 64, 511, 512, 4095, 4096, 4097, 65536, 1 << 31, (1 << 32) - 1,
         1 << 40, (1 << 63) - 1, (1 << 64) - 1]
#: the QCOW2 header's fields: (offset, size)
QCOW2_FIELDS = [(4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (48, 8), (56, 4), (60, 4),
                (64, 8), (72, 8), (80, 8), (88, 8), (96, 4), (100, 4), (104, 8)]


@dataclasses.dataclass
class Base:
    """A pristine backup: its files, and what a restore of it must give back."""

    name: str
    files: list[Path]          # data and manifest of each link, full first
    content: bytes


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[Base]:
    from virtrbd.backup.make import write_full_backup, write_incremental_backup
    from virtrbd.backup.results import BackupPlan, SourceFacts

    from .conftest import MemoryDiffSource, MemorySource

    made = []
    for fmt, size, cluster in (("raw", 192 << 10, 0), ("qcow2", (256 << 10) + 100, 4096)):
        folder = tmp_path_factory.mktemp(fmt)
        content, extents = scattered(size, seed=len(made) + 1, count=6, sizes=(1, 700, 5000))
        plan = BackupPlan(ImageSpec("rbd", "img", "s1"), folder, fmt, None, cluster or 64 << 10)
        result = write_full_backup(MemorySource(content, extents), SourceFacts(size, "abc123", 1), plan)
        made.append(Base(fmt, [result.path, result.manifest], content))
    folder = tmp_path_factory.mktemp("diff")
    first, extents = scattered(128 << 10, seed=9, count=5, sizes=(1, 3000))
    full = write_full_backup(MemorySource(first, extents), SourceFacts(128 << 10, "abc123", 1),
                             BackupPlan(ImageSpec("rbd", "img", "s1"), folder, "raw"))
    second, changes = apply_changes(first, 128 << 10, [(9000, b"new data" * 40), (70000, b"z")], [(0, 4096)])
    inc = write_incremental_backup(MemoryDiffSource(second, changes), SourceFacts(128 << 10, "abc123", 2),
                                   BackupPlan(ImageSpec("rbd", "img", "s2"), folder, "rbd-diff-v1",
                                              ImageSpec("rbd", "img", "s1")))
    made.append(Base("diff", [full.path, full.manifest, inc.path, inc.manifest], second))
    return made


# --- mutations ---------------------------------------------------------------------------------------------

def set_int(data: bytearray, offset: int, size: int, value: int) -> None:
    if offset + size <= len(data):
        data[offset:offset + size] = (value % (1 << (8 * size))).to_bytes(size, "big")


def qcow2_tables(data: bytes) -> list[int]:
    """Offsets of the L1, L2, refcount table and refcount block entries of a pristine QCOW2 file."""
    cluster = 1 << struct.unpack_from(">I", data, 20)[0]
    l1_size, l1_offset, rt_offset, rt_clusters = struct.unpack_from(">IQQI", data, 36)
    entries = [l1_offset + 8 * k for k in range(l1_size)]
    for k in range(l1_size):
        l2 = struct.unpack_from(">Q", data, l1_offset + 8 * k)[0] & 0x00FF_FFFF_FFFF_FE00
        if l2:
            entries += [l2 + 8 * j for j in range(0, cluster // 8, 37)]
    for k in range(rt_clusters * cluster // 8):
        block = struct.unpack_from(">Q", data, rt_offset + 8 * k)[0]
        entries.append(rt_offset + 8 * k)
        if block:
            entries += [block + 2 * j for j in range(0, cluster // 2, 53)]
    return entries


def diff_records(data: bytes) -> list[int]:
    """Offsets of the tags of a pristine rbd diff v1 file's records."""
    at, found = len(b"rbd diff v1\n"), []
    while at < len(data):
        found.append(at)
        tag = data[at:at + 1]
        if tag in (b"f", b"t"):
            at += 5 + struct.unpack_from("<I", data, at + 1)[0]
        elif tag == b"s":
            at += 9
        elif tag == b"w":
            at += 17 + struct.unpack_from("<Q", data, at + 9)[0]
        elif tag == b"z":
            at += 17
        else:
            break
    return found


def mutate_data(rng: random.Random, data: bytearray, kind: str) -> str:
    choice = rng.random()
    if kind == "qcow2" and choice < 0.3:
        offset, size = rng.choice(QCOW2_FIELDS)
        value = rng.choice(EDGES + [int.from_bytes(data[offset:offset + size], "big") + rng.choice((-1, 1))])
        set_int(data, offset, size, value)
        return f"header field at {offset} = {value}"
    if kind == "qcow2" and choice < 0.6:
        offset = rng.choice(qcow2_tables(bytes(data)))
        width = 2 if rng.random() < 0.3 else 8
        value = rng.choice(EDGES + [int.from_bytes(data[offset:offset + width], "big") ^ (1 << rng.randrange(8 * width))])
        set_int(data, offset, width, value)
        return f"table entry at {offset} ({width} bytes) = {value}"
    if kind == "diff" and choice < 0.5:
        offset = rng.choice(diff_records(bytes(data)))
        if rng.random() < 0.4:
            data[offset] = rng.choice(b"ftswze?\x00")
            return f"record tag at {offset}"
        field = offset + 1 + rng.choice((0, 8))
        set_int(data, field, rng.choice((4, 8)), rng.choice(EDGES))
        return f"record field at {field}"
    if choice < 0.8:
        offset = rng.randrange(len(data))
        data[offset] ^= rng.randrange(1, 256)
        return f"byte {offset} flipped"
    if choice < 0.9:
        length = rng.randrange(len(data))
        del data[length:]
        return f"truncated to {length}"
    extra = rng.randbytes(rng.choice((1, 511, 4096)))
    data += extra
    return f"{len(extra)} bytes appended"


def mutate_manifest(rng: random.Random, text: str) -> tuple[str, str]:
    data = json.loads(text)
    choice = rng.random()
    if choice < 0.15:
        raw = bytearray(text.encode())
        at = rng.randrange(len(raw))
        raw[at] ^= rng.randrange(1, 128)
        return raw.decode(errors="replace"), f"byte {at} flipped"
    if choice < 0.2:
        length = rng.randrange(len(text))
        return text[:length], f"truncated to {length}"
    key = rng.choice(sorted(data))
    forge = key in ("checksum", "file_checksum", "size", "file_size", "format", "cluster_size", "file")
    value = data[key]
    data[key] = rng.choice([None, "", 0, -1, 1 << 70, [], {}, True, "x" * 5,
                            value + 1 if isinstance(value, int) and not isinstance(value, bool) else "other",
                            {**value, "value": "0" * 64} if isinstance(value, dict) else None])
    how = f"{key} = {data[key]!r}"
    if rng.random() < 0.1:
        data.pop(key)
        how = f"{key} removed"
    if forge and rng.random() < 0.5:
        data.pop("seal", None)
        return manifests.dumps(data), f"{how}, sealed again"   # a genuine manifest of another file, not this one
    return json.dumps(data, indent=2, sort_keys=True) + "\n", how


# --- the judges --------------------------------------------------------------------------------------------

def qemu_img_rejects(path: Path) -> bool:
    done = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(path)], capture_output=True, timeout=60)
    return done.returncode != 0


def structure_refuses(manifest_path: Path) -> bool:
    """virtrbd's structure check alone, as a restore runs it before anything is written."""
    try:
        m = manifests.resolve(manifest_path)
        m.file_checksum = None                      # judged without the file's CRC
        check_backup_file(m)
    except VirtrbdError:
        return True
    return False


def restore_judged(newest: Path, content: bytes) -> str | None:
    """None when the restore failed leaving nothing, or gave back ``content``; else what went wrong."""
    cluster = FakeCluster()
    try:
        run_restore(cluster, plan_restore(newest), ImageSpec("rbd", "vm1"))
    except VirtrbdError:
        return None if not cluster.names() else f"a failed restore left {sorted(cluster.names())}"
    got = bytes(cluster.pools["rbd"]["vm1"].data)
    return None if got == content else "a restore succeeded with other content"


def test_every_mutant_is_refused(bases, tmp_path):
    rng = random.Random(SEED)
    problems, qemu_rejected, restored = [], 0, 0
    for number in range(MUTANTS):
        base = bases[number % len(bases)]
        folder = tmp_path / f"m{number}"
        folder.mkdir()
        for path in base.files:
            shutil.copy(path, folder / path.name)
        target = folder / rng.choice(base.files[-2:]).name           # the newest link's data or manifest
        original = target.read_bytes()
        if target.name.endswith(manifests.SUFFIX):
            text, how = mutate_manifest(rng, original.decode())
            target.write_text(text)
        else:
            data = bytearray(original)
            how = mutate_data(rng, data, "diff" if base.name == "diff" else base.name)
            target.write_bytes(bytes(data))
        if target.read_bytes() == original:
            continue
        what = f"seed {SEED} mutant {number} ({base.name}, {target.name}: {how})"
        newest = folder / base.files[-1].name
        started = time.monotonic()
        try:
            verify(newest)
            problems.append(f"{what}: verify accepted it")
        except VirtrbdError:
            pass
        except Exception as exc:       # a traceback for the user: the defect this test exists for
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
        if time.monotonic() - started > 30:
            problems.append(f"{what}: verify took {time.monotonic() - started:.0f} s")
        if base.name == "qcow2" and not target.name.endswith(manifests.SUFFIX) and qemu_img_rejects(target):
            qemu_rejected += 1
            if not structure_refuses(newest):
                problems.append(f"{what}: qemu-img check rejects it, virtrbd's structure check does not")
        if number % 7 == 0:
            restored += 1
            try:
                verdict = restore_judged(newest, base.content)
            except Exception as exc:
                verdict = f"{type(exc).__name__}: {exc}"
            if verdict:
                problems.append(f"{what}: {verdict}")
        shutil.rmtree(folder)
    print(f"\nfuzz (seed {SEED}): {MUTANTS} mutants, {qemu_rejected} rejected by qemu-img check, {restored} restored")
    assert problems == [], "\n".join(problems[:20])
    assert qemu_rejected > MUTANTS // 20 and restored > MUTANTS // 10     # the judges did judge
