"""Synthetic fulls and merged diffs, from secondary storage only.

``synthesize``: a full backup and the diffs up to a point become one new full of that point.
The chain is read as one image in offset order (``overlay.chain_chunks``: the
diffs' ranges laid over the full's chunks, every checksum checked as it is
read) and written like a snapshot's backup (``write_full_chunks``), so the new
full's content checksum is the one a fresh full backup of the same snapshot
has, and its manifest is the same but for ``made_from``, the files it was made
of.  The data is read once and written once.  A full from the SHA-256 days with
a data CRC is checked over whole chunks instead: its chain is applied into a
sparse scratch file beside the backups, which is then backed up (the image's
data once more on the backup storage, for the time of the merge).

``merge_diffs``: the diffs from an older point to a newer one become one diff,
with the content ``rbd merge-diff`` gives: the diffs are applied, checked, into
a sparse scratch file that records which ranges they touched (a size record
that shrinks the image touches what it cuts off), and that file is written out
as an incremental backup whose changes are those ranges, so its records say
the final bytes of every range any of the diffs changed, in offset order.
Memory grows with the number of separate changed ranges, as the diffs do.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from .. import exits
from ..errors import BackupError, UsageError
from ..progress import Progress
from ..spec import check_name
from .files import temp_name
from .formats.manifest import DIFF_FORMAT
from .make import write_full_backup, write_full_chunks, write_incremental_backup
from .overlay import Overlay, chain_chunks
from .restore import apply_diff, plan_restore, restore_chain
from .results import BackupPlan, BackupResult, RestorePlan, SourceFacts
from .stream import MiB
from .trust import Trust

_PUNCH_HOLE = 0x02 | 0x01           # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_ZEROS = bytes(1 * MiB)

#: why an encrypted chain is not merged without its identity
SEALED = ("merging reads it: give the identity that opens it (--identity FILE), where the identity is (never on "
          "a host that only writes backups)")


@dataclass(frozen=True)
class Keys:
    """What a merge of encrypted or signed backups needs: the identities that open the chain, the recipients
    the merged backup is encrypted to, the trust its manifests are checked against, the key that signs."""

    identities: list | None = None
    recipients: tuple = ()
    trust: Trust | None = None
    signing_key: object = None

    def plan(self, src: os.PathLike | str) -> RestorePlan:
        plan = plan_restore(src, self.identities, trust=self.trust,
                            refuse_sealed=SEALED if self.identities is None else None)
        if self.identities is not None and not self.recipients \
                and any(m.encryption is not None for m in plan.links):
            raise UsageError(f"{plan.newest.file}: its chain is encrypted: name the recipients of the merged "
                             f"backup (--recipient, or [backup] recipients), else it would be written in the clear")
        return plan

    def output(self, spec, dest: Path, fmt: str, since=None) -> BackupPlan:
        return BackupPlan(spec, dest, fmt, since, recipients=self.recipients, signing_key=self.signing_key)


class ScratchImage:
    """A sparse file standing for the image while a chain is applied: a ``stream.Sink``, then a ``Source``."""

    def __init__(self, path: Path, size: int):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._token = exits.remove_at_forced_exit(path)
        os.ftruncate(self.fd, size)
        self.size = size
        self.written_bytes = 0

    # --- as a Sink ---

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        view = memoryview(data)[start:end]
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done
            self.written_bytes += done

    def zero(self, offset: int, length: int) -> None:
        length = min(length, self.size - offset)
        if length > 0 and not _punch(self.fd, offset, length):
            for at in range(offset, offset + length, len(_ZEROS)):
                self.write(at, _ZEROS, 0, min(len(_ZEROS), offset + length - at))

    def resize(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.size = size

    def drain(self) -> None:
        pass

    def flush(self) -> None:
        pass

    # --- as a Source ---

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The data regions in the range, found with SEEK_DATA/SEEK_HOLE from ``offset`` on."""
        found, at, end = [], offset, min(offset + length, self.size)
        while at < end:
            try:
                start = os.lseek(self.fd, at, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:           # only a hole until the end
                    break
                raise
            if start >= end:
                break
            stop = min(os.lseek(self.fd, start, os.SEEK_HOLE), end)
            found.append((start, stop - start))
            at = stop
        return found

    def submit_read(self, offset: int, length: int, done) -> None:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            done(None, exc)
            return
        done(data, None)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        exits.forget(self._token)


def synthesize(src: os.PathLike | str, *, fmt: str | None = None, progress: Progress | None = None,
               keys: Keys = Keys()) -> BackupResult:
    """A new full backup (``raw`` or ``qcow2``; QCOW2 by default when it is encrypted, else RAW) of the point
    ``src`` holds, beside it, from its chain alone."""
    plan = keys.plan(src)
    fmt = fmt or ("qcow2" if keys.recipients else "raw")
    if keys.recipients and fmt == "raw":
        raise UsageError("an encrypted full backup is QCOW2: in a RAW file every hole would become ciphertext")
    newest = plan.newest
    if len(plan.links) == 1 and newest.format == fmt:
        raise BackupError(f"{newest.file} is a {fmt} full backup already: nothing to merge")
    assert newest.path is not None, "a planned chain's manifests were read from files"
    dest = newest.path.parent
    facts = SourceFacts(size=newest.size, image_id=newest.image_id, snapshot_id=newest.snapshot_id,
                        object_size=newest.object_size, snapshot_time=newest.snapshot_time)
    made_from = [link.file for link in plan.links]
    if "data_crc32c" not in plan.links[0].checksum:       # all but the oldest fulls: no scratch copy
        return write_full_chunks(chain_chunks(plan), facts, keys.output(newest.spec, dest, fmt), progress=progress,
                                 made_from=made_from)
    scratch = ScratchImage(temp_name(dest / f"{newest.file}.merge"), plan.links[0].size)
    try:
        restore_chain(plan, scratch, progress=progress)
        if scratch.size != newest.size:
            raise BackupError(f"{newest.file}: the chain ends at {scratch.size} bytes, its manifest says "
                              f"{newest.size}")
        return write_full_backup(scratch, facts, keys.output(newest.spec, dest, fmt), progress=progress,
                                 made_from=made_from)
    finally:
        scratch.close()


class ChangedScratch(ScratchImage):
    """A scratch image that remembers every range written, zeroed or cut off: the changes of a merged diff."""

    def __init__(self, path: Path, size: int):
        super().__init__(path, size)
        self.touched = Overlay()            # only the ranges count here, not where their bytes are

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        super().write(offset, data, start, end)
        self.touched.put(offset, offset + (len(data) if end is None else end) - start, None)

    def zero(self, offset: int, length: int) -> None:
        super().zero(offset, length)
        self.touched.put(offset, offset + length, None)

    def resize(self, size: int) -> None:
        self.touched.put(size, self.size, None)  # a shrink cuts data off: grown again, it reads as zeros
        super().resize(size)

    def changes(self, offset: int, length: int, older: str) -> list[tuple[int, int, bool]]:
        joined: list[list[int]] = []                # ranges that meet are one change
        for start, end, _ in self.touched.within(offset, offset + length):
            if joined and joined[-1][1] == start:
                joined[-1][1] = end
            else:
                joined.append([start, end])
        return [(start, end - start, True) for start, end in joined]


def merge_diffs(src: os.PathLike | str, older: str, *, progress: Progress | None = None,
                keys: Keys = Keys()) -> BackupResult:
    """One diff from point ``older`` to the point ``src`` holds (an incremental), beside it, made of the diffs
    between them in its chain; its manifest names them (``made_from``)."""
    check_name("snapshot", older)
    plan = keys.plan(src)
    newest = plan.newest
    points = [link.snapshot for link in plan.links]
    if older not in points[:-1]:
        raise UsageError(f"{newest.file}: @{older} is not an earlier point of its chain "
                         f"({', '.join('@' + p for p in points)})")
    diffs = plan.links[points.index(older) + 1:]
    if len(diffs) == 1:
        raise BackupError(f"{newest.file} is the diff from @{older} already: nothing to merge")
    assert newest.path is not None, "a planned chain's manifests were read from files"
    dest = newest.path.parent
    facts = SourceFacts(size=newest.size, image_id=newest.image_id, snapshot_id=newest.snapshot_id,
                        object_size=newest.object_size, snapshot_time=newest.snapshot_time)
    base = plan.links[points.index(older)]
    scratch = ChangedScratch(temp_name(dest / f"{newest.file}.merge"), base.size)
    try:
        total = sum(m.file_size for m in diffs)
        done = 0
        for m in diffs:
            done = apply_diff(m, scratch, done, total, progress)
        return write_incremental_backup(scratch, facts, keys.output(newest.spec, dest, DIFF_FORMAT,
                                                                    newest.spec.image_spec.at(older)),
                                        progress=progress, made_from=[m.file for m in diffs])
    finally:
        scratch.close()


def _punch(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range (it reads as zeros after); False where the filesystem cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, _PUNCH_HOLE, offset, length) == 0:
        return True
    if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
