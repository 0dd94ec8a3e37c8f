"""``virtrbd backup|restore|verify``: snapshots to secondary storage and back.

Every input (specs, destination, manifests, the backup files' structure) is
checked before connecting to the cluster.  Ctrl-C, SIGTERM and SIGHUP stop an
operation at a safe point; it removes its temporary file (or image) and the
command exits 130.
Progress, with rate and ETA, is drawn on stderr only when it is a terminal.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..units import format_size
from .common import add_signer_option, backup_trust, emit_json, open_storage, size_arg
from .progress import terminal_progress
from .signals import cooperative


def add_parser(subparsers) -> None:
    backup = subparsers.add_parser(
        "backup", help="back up a snapshot to a directory: RAW, QCOW2, or incremental (rbd diff)",
        description="Write POOL/IMAGE@SNAP into DEST (a directory, e.g. an NFS mount) as a sparse RAW file or a "
                    "QCOW2 file, or with --since the changes from an older snapshot as an 'rbd diff v1' stream "
                    "(rbd import-diff applies it).  A JSON manifest is written beside the file.")
    backup.add_argument("snapshot", metavar="POOL/IMAGE@SNAP", nargs="?", help="left out with --domain")
    backup.add_argument("dest", metavar="DEST", nargs="?", help="destination directory (must exist)")
    backup.add_argument("--format", choices=["raw", "qcow2"],
                        help="full backup format (default raw; qcow2 when the backup is encrypted)")
    backup.add_argument("--since", metavar="POOL/IMAGE@OLDER",
                        help="incremental: only what changed since this older snapshot, whose backup is in DEST "
                             "(with --domain: the older snapshot's name)")
    add_domain_options(backup)
    backup.add_argument("--cluster-size", type=size_arg, metavar="SIZE",
                        help="QCOW2 cluster size, 4K..2M (default 64K)")
    backup.add_argument("--recipient", action="append", default=[], metavar="AGE1…",
                        help="encrypt the backup (age) to this public recipient too, beside [backup] recipients "
                             "(repeatable); only the identities of the recipients can read it")
    backup.add_argument("--json", action="store_true", help="print a JSON summary")
    backup.set_defaults(func=cmd_backup)

    restore = subparsers.add_parser(
        "restore", help="restore a backup (full, or a chain of incrementals) into a new image",
        description="Restore SRC (a backup file or its manifest; for an incremental, the chain down to its full "
                    "backup is followed) into POOL/IMAGE.  The image is built under a temporary name and renamed "
                    "once every checksum matched.")
    restore.add_argument("src", metavar="SRC", nargs="?", help="backup file (or its .manifest.json)")
    restore.add_argument("target", metavar="POOL/IMAGE", nargs="?", help="left out with --domain-set")
    restore.add_argument("--domain-set", action="store_true",
                         help="SRC is one of a domain's backups (backup --domain): restore every disk of its set, "
                              "each into its own image")
    restore.add_argument("--suffix", default="", metavar="TEXT",
                         help="with --domain-set: restore each disk into its image's name followed by TEXT "
                              "(--suffix=-copy for one that starts with a dash)")
    restore.add_argument("--force", action="store_true",
                         help="replace an existing image (only if it has no snapshots and is not in use)")
    restore.add_argument("--snapshot", action="store_true",
                         help="also create the backup's snapshot on the new image (so rbd import-diff applies "
                              "later incrementals)")
    from .instant_restore import add_instant_options
    add_instant_options(restore)
    restore.add_argument("--identity", type=Path, metavar="FILE",
                         help="the age identity file that opens encrypted backups (0600; never kept on a "
                              "hypervisor that only writes backups)")
    add_signer_option(restore)
    restore.add_argument("--json", action="store_true", help="print a JSON summary")
    restore.set_defaults(func=cmd_restore)

    verify = subparsers.add_parser(
        "verify", help="recompute a backup's checksum; optionally compare it with a live snapshot",
        description="Check that SRC is intact: its size, structure and checksum match its manifest.  With "
                    "--against, also compare its content with a snapshot in the cluster.")
    verify.add_argument("src", metavar="SRC", help="backup file (or its .manifest.json)")
    verify.add_argument("--against", metavar="POOL/IMAGE@SNAP", help="compare with this snapshot")
    verify.add_argument("--identity", type=Path, metavar="FILE",
                        help="the age identity file of an encrypted backup: its content is then checked too")
    add_signer_option(verify)
    verify.add_argument("--json", action="store_true", help="print a JSON summary")
    verify.set_defaults(func=cmd_verify)


# --- commands -------------------------------------------------------------------------------------------

def cmd_backup(args) -> int:
    if args.domain is not None or args.name is not None:
        from .domain_backup import cmd_backup_domain
        return cmd_backup_domain(args)
    if args.snapshot is None or args.dest is None:
        raise UsageError("backup: name POOL/IMAGE@SNAP and DEST, or --domain NAME --name SNAP DEST")
    from ..backup import backup, plan_backup
    bound_memory()
    from ..storage import Storage
    storage = Storage(args.config)
    plan = plan_backup(storage, args.snapshot, args.dest, format=args.format, since=args.since,
                       cluster_size=args.cluster_size, recipients=args.recipient)
    with storage, cooperative():
        result = backup(storage, plan, progress=terminal_progress(f"backup {plan.spec}"))
    if args.json:
        emit_json(summary(result, rate_bytes_per_s=round(result.rate)))
    else:
        what = f"changes since @{result.from_snapshot}" if result.from_snapshot else format_size(result.size)
        print(f"backed up {result.image} ({what}, {format_size(result.data_bytes)} of data) to {result.path} "
              f"[{result.format}, {format_size(result.file_size)}] in {result.seconds:.2f} s")
    return 0


def cmd_restore(args) -> int:
    from .instant_restore import cmd_instant, instant_asked
    if instant_asked(args):
        return cmd_instant(args)
    if args.src is None:
        raise UsageError("restore: name SRC (a backup file or its manifest)")
    if args.domain_set:
        from .domain_backup import cmd_restore_set
        return cmd_restore_set(args)
    if args.target is None or args.suffix:
        raise UsageError("restore: name SRC and POOL/IMAGE (--suffix goes with --domain-set)")
    from ..backup import identities, plan_restore, restore
    from ..backup.tuning import RESTORE_CONFIG
    bound_memory()
    storage, target = open_storage(args, args.target, snapshot=False,
                                   ceph_options=RESTORE_CONFIG)     # this process only restores
    plan = plan_restore(args.src, identities(args.identity), trust=backup_trust(args, storage.config.backup))
    with storage, cooperative():
        result = restore(storage, plan, target, force=args.force, create_snapshot=args.snapshot,
                         progress=terminal_progress(f"restore {target}"))
    if args.json:
        emit_json(summary(result))
    else:
        steps = f"{len(result.chain)} backups" if len(result.chain) > 1 else "1 backup"
        print(f"restored {result.image} from {steps} (@{result.snapshot}, {format_size(result.size)}, "
              f"{format_size(result.written_bytes)} written through {result.path}) in {result.seconds:.2f} s"
              + (" — replaced the old image" if result.replaced else ""))
    return 0


def cmd_verify(args) -> int:
    from ..backup import verify
    progress = terminal_progress(f"verify {Path(args.src).name}")
    if args.against is None:
        trust = backup_trust(args)
        with cooperative():
            result = verify(args.src, progress=progress, identity=args.identity, trust=trust)
    else:
        bound_memory()
        storage, against = open_storage(args, args.against, snapshot=True)
        trust = backup_trust(args, storage.config.backup)
        from ..backup.formats import manifest
        manifest.resolve(args.src)          # a missing or bad manifest fails before connecting
        with storage, cooperative():
            result = verify(args.src, against=against, storage=storage, progress=progress, identity=args.identity,
                            trust=trust)
    if args.json:
        emit_json(summary(result))
    else:
        also = f", identical to {result.against}" if result.against else ""
        print(f"OK {result.file}: {result.kind} backup of {result.image}, checksum matches{also}; "
              f"manifest {result.signature}")
        if result.judged == "content":
            print(f"note: {Path(result.file).name} was written before backups recorded a checksum of their file: "
                  f"only its content was checked")
    return 0


def add_domain_options(parser) -> None:
    from ..domains.request import DEFAULT_FREEZE_TIMEOUT, QUIESCE
    parser.add_argument("--domain", metavar="NAME", help="back up every rbd disk of this libvirt domain at SNAP "
                        "(--name), snapshotting the domain at one instant first when SNAP is new")
    parser.add_argument("--name", metavar="SNAP", help="with --domain: the snapshot's name on each disk")
    parser.add_argument("--quiesce", choices=QUIESCE, default="auto",
                        help="with --domain, when SNAP is taken: freeze the guest's filesystems around it (auto: "
                             "when its agent answers; require: else nothing is made; off)")
    parser.add_argument("--freeze-timeout", type=float, default=DEFAULT_FREEZE_TIMEOUT, metavar="SECONDS",
                        help=f"with --domain: a guard thaws the guest at the latest this long after the freeze "
                             f"(default {DEFAULT_FREEZE_TIMEOUT:g})")


# --- helpers --------------------------------------------------------------------------------------------

def bound_memory() -> None:
    """For commands that move an image's data: a peak RSS that does not depend on thread timing, and
    buffers reused rather than faulted in again (see rbd_io.return_large_buffers_to_the_system)."""
    from ..backup.rbd_io import return_large_buffers_to_the_system
    return_large_buffers_to_the_system()


def summary(result, **extra) -> dict:
    """A result as the --json output of backup, restore and verify (and their domain forms) prints it."""
    data: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
    data.update(extra)
    if "seconds" in data:
        data["seconds"] = round(data["seconds"], 3)
    data["peak_rss_bytes"] = peak_rss()
    return data


def peak_rss() -> int | None:
    """This process's peak resident memory (VmHWM).

    Not ``getrusage``: a process started by fork/exec inherits its parent's
    high-water mark in ``ru_maxrss``, while VmHWM belongs to the address space
    and starts afresh at exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


