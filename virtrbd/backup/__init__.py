"""Backups of RBD snapshots to secondary storage (a directory, typically an NFS mount).

::

    from virtrbd import Storage
    from virtrbd import backup

    with Storage() as storage:
        full = backup.backup(storage, "rbd/vm1@mon", "/mnt/backups", format="qcow2")
        inc = backup.backup(storage, "rbd/vm1@tue", "/mnt/backups", since="rbd/vm1@mon")
        backup.verify(inc.path)                                  # no cluster needed
        backup.verify(full.path, against="rbd/vm1@mon", storage=storage)
        backup.restore(storage, inc.path, "rbd/vm1-restored")    # full + incrementals

Formats: RAW (a sparse file), QCOW2 (version 3, written by virtrbd, 64 KiB
clusters by default), and for incrementals the ``rbd diff v1`` stream that
``rbd import-diff`` applies.  Every backup file has a JSON manifest beside it
(``manifest.py``).  Every failure is a ``virtrbd.errors`` class: ``UsageError``
for a request that cannot be right, ``CorruptBackupError`` for a backup that is
not what its manifest says, ``BackupError`` and the Ceph classes otherwise.

Each operation has a ``plan_*`` step that needs no cluster (parse, check the
destination, the manifests, the files' structure), so the CLI fails on bad
input before connecting, and the operation itself accepts the plan.

Stopping: an operation stops at its next safe point (never in the middle of
counting what is in flight), cleans up, and raises ``Cancelled`` (a
``KeyboardInterrupt``) when its ``cancel`` event is set, or, without one, when
``cancel()`` is called.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from ..errors import UsageError
from ..progress import Progress
from ..spec import ImageSpec
from .catalog import Entry, catalog
from .formats import manifest as manifests
from .formats.manifest import DIFF_FORMAT, FORMATS, Manifest
from .formats.qcow2 import DEFAULT_CLUSTER_SIZE, cluster_bits_for
from .make import run_backup
from .restore import plan_restore, run_restore
from .results import BackupPlan, BackupResult, RestorePlan, RestoreResult, VerifyResult
from .stream import Cancelled, cancel, cancellable
from .trust import Trust
from .verify import run_verify

__all__ = ["BackupPlan", "BackupResult", "RestorePlan", "RestoreResult", "VerifyResult", "Manifest", "Cancelled",
           "plan_backup", "plan_restore", "backup", "restore", "verify", "cancel", "FORMATS", "DIFF_FORMAT",
           "catalog", "Entry", "identities", "Trust", "signing_key_of", "parse_recipients"]


def plan_backup(storage, spec: str | ImageSpec, dest_dir: os.PathLike | str, *, format: str | None = None,
                since: str | ImageSpec | None = None, cluster_size: int | None = None,
                recipients: Sequence[str] = ()) -> BackupPlan:
    """Check a backup request without touching the cluster.

    The backup is encrypted (age) to ``recipients`` and to ``[backup] recipients`` of the storage's config;
    an encrypted full backup is QCOW2 (a RAW file's holes would all be ciphertext).  Its manifest is signed
    with ``[backup] signing_key`` when the config names one.
    """
    snapshot = storage.spec(spec, snapshot=True)
    sealed_to = parse_recipients([*storage.config.backup.recipients, *recipients])
    signing_key = signing_key_of(storage.config.backup)
    dest = Path(dest_dir)
    if not dest.is_dir():
        raise UsageError(f"{dest}: not a directory (the destination must exist, e.g. a mounted NFS share)")
    if not os.access(dest, os.W_OK | os.X_OK):
        raise UsageError(f"{dest}: not writable")
    older = None
    if since is not None:
        older = storage.spec(since, snapshot=True)
        if older.image_spec != snapshot.image_spec:
            raise UsageError(f"--since {older} is a snapshot of another image than {snapshot}")
        if older.snapshot == snapshot.snapshot:
            raise UsageError(f"--since {older} is the snapshot being backed up")
        if format not in (None, DIFF_FORMAT):
            raise UsageError("an incremental backup (--since) is an rbd diff stream; --format applies to full "
                             "backups only")
        if cluster_size is not None:
            raise UsageError("--cluster-size applies to QCOW2 backups only")
        return BackupPlan(snapshot, dest, DIFF_FORMAT, older, recipients=sealed_to, signing_key=signing_key)
    if sealed_to and format == "raw":
        raise UsageError("an encrypted full backup is QCOW2: in a RAW file every hole would become ciphertext "
                         "(use --format qcow2, or leave --format out)")
    format = format or ("qcow2" if sealed_to else "raw")
    if format not in FORMATS:
        raise UsageError(f"unknown backup format {format!r} (raw or qcow2)")
    if cluster_size is not None and format != "qcow2":
        raise UsageError("--cluster-size applies to QCOW2 backups only")
    size = cluster_size or DEFAULT_CLUSTER_SIZE
    cluster_bits_for(size)
    return BackupPlan(snapshot, dest, format, None, size, recipients=sealed_to, signing_key=signing_key)


def parse_recipients(texts: Sequence[str]) -> tuple:
    """Parsed recipients, each once, in the order given (the key code loaded only for some)."""
    if not texts:
        return ()
    from .sealing.keys import parse_recipient
    found: dict[bytes, object] = {}
    for text in texts:
        recipient = parse_recipient(str(text))
        found.setdefault(recipient.public, recipient)
    return tuple(found.values())


def signing_key_of(settings):
    """The key of ``[backup] signing_key`` (None when the config names none)."""
    if settings.signing_key is None:
        return None
    from .sealing.signing import read_signing_key
    return read_signing_key(settings.signing_key)


def identities(identity: os.PathLike | str | None) -> list | None:
    """The identities in an age identity file (None for none), for ``plan_restore``."""
    if identity is None:
        return None
    from .sealing.keys import read_identities
    return read_identities(Path(identity))


def backup(storage, spec: str | ImageSpec | BackupPlan, dest_dir: os.PathLike | str | None = None, *,
           format: str | None = None, since: str | ImageSpec | None = None, cluster_size: int | None = None,
           progress: Progress | None = None, direct_io: bool = True,
           cancel: threading.Event | None = None) -> BackupResult:
    """Back up ``POOL/IMAGE@SNAP`` into ``dest_dir``; ``since`` (an older snapshot) makes it incremental.

    ``storage`` is a connected ``virtrbd.Storage``.  The file is written under a
    temporary name, synced and published with its manifest; on any failure
    (or KeyboardInterrupt) nothing is left under the final name.
    """
    if isinstance(spec, BackupPlan):
        plan = spec
    elif dest_dir is None:
        raise UsageError(f"a backup of {spec} needs a destination directory")
    else:
        plan = plan_backup(storage, spec, dest_dir, format=format, since=since, cluster_size=cluster_size)
    with cancellable(cancel):
        return run_backup(storage.cluster, plan, progress=progress, direct_io=direct_io)


def restore(storage, src: os.PathLike | str | RestorePlan, target: str | ImageSpec, *, force: bool = False,
            create_snapshot: bool = False, progress: Progress | None = None,
            cancel: threading.Event | None = None, identity: os.PathLike | str | None = None) -> RestoreResult:
    """Restore a backup (a full one, or the newest incremental of a chain) into a new image ``target``.

    An existing ``target`` is refused unless ``force``; then it is replaced only
    once the restored copy is complete and verified, and only if it has no
    snapshots and nobody has it open.  ``create_snapshot`` also makes the
    backup's snapshot on the new image, so ``rbd import-diff`` of later
    incrementals applies to it.  ``identity``: the age identity file that opens
    encrypted backups.
    """
    plan = src if isinstance(src, RestorePlan) else plan_restore(src, identities(identity),
                                                                 trust=Trust.of(storage.config.backup))
    spec = storage.spec(target, snapshot=False)
    # through libvirt's volume upload where the running daemon has it (virtrbd's patched rbd backend)
    from ..libvirt.host import nobody_listens
    from .via_libvirt import known_unable
    uri = storage.config.libvirt.uri
    if nobody_listens(uri) or known_unable(uri):
        libvirt_side: AbstractContextManager = nullcontext(None)
    else:
        from ..libvirt.policy import upload_target
        libvirt_side = upload_target(storage.config)
    with cancellable(cancel), libvirt_side as libvirt:
        return run_restore(storage.cluster, plan, spec, force=force, create_snapshot=create_snapshot,
                           progress=progress, libvirt=libvirt)


def verify(src: os.PathLike | str, *, against: str | ImageSpec | None = None, storage=None,
           progress: Progress | None = None, cancel: threading.Event | None = None,
           identity: os.PathLike | str | None = None, trust: Trust | None = None) -> VerifyResult:
    """Recompute a backup's checksum against its manifest; ``against`` also compares with a live snapshot.
    An encrypted backup's content needs ``identity`` (the age identity file that opens it); without it,
    every byte of the file is checked against the manifest's digests.  The manifest's signature is checked
    against ``trust`` (by default the signers of the storage's config, if a storage is given)."""
    if trust is None and storage is not None:
        trust = Trust.of(storage.config.backup)
    manifest = manifests.resolve(src)
    manifest.identities = identities(identity)
    spec = None
    if against is not None:
        if storage is None:
            raise UsageError("verify against a snapshot needs a connected Storage")
        spec = storage.spec(against, snapshot=True)
    with cancellable(cancel):
        return run_verify(manifest, cluster=storage.cluster if storage is not None else None, against=spec,
                          progress=progress, trust=trust)
