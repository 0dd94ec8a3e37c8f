"""``virtrbd backups``: what a backup directory holds, from secondary storage alone (no cluster)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..units import format_size
from .common import add_signer_option, backup_trust, emit_json, local_backup_settings


def add_parser(subparsers) -> None:
    backups = subparsers.add_parser(
        "backups", help="the backups in a directory, with their chains (no cluster needed)",
        description="Work on a backup directory alone: nothing here connects to Ceph.")
    actions = backups.add_subparsers(dest="backups_action", metavar="ACTION", required=True)
    ls = actions.add_parser(
        "ls", help="every backup in DIR: image, snapshot, kind, format, size on disk, parent, chain",
        description="List every backup in DIR and whether its chain is complete.  Files that are not backups, "
                    "and backups whose manifest is missing or broken, are listed as such; the exit status is 1 "
                    "when a backup is broken.  Checks manifests, links and file sizes, not the data (verify).")
    ls.add_argument("directory", metavar="DIR")
    ls.add_argument("--image", metavar="POOL/IMAGE", help="only this image's backups")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(func=cmd_ls)

    rm = actions.add_parser(
        "rm", help="remove a backup; refused while others are built on it",
        description="Remove the backup FILE (its data file or manifest).  Refused, with their names, while "
                    "incrementals are built on it; --force removes those too, newest first, so no chain is left "
                    "with a hole.  The manifest goes first: a removal cut short leaves only a data file without "
                    "manifest, which running it again takes away.")
    rm.add_argument("file", metavar="FILE")
    rm.add_argument("--force", action="store_true", help="also remove the backups built on it")
    rm.set_defaults(func=cmd_rm)

    merge = actions.add_parser(
        "merge", help="a full backup and its diffs up to FILE become one new full of FILE's point; or, with "
                      "--from, the diffs from an older point one diff",
        description="Make a synthetic full backup of the point FILE holds (an incremental, or a full in another "
                    "format) from its chain on secondary storage alone, beside it: every checksum of the chain "
                    "is checked as it is read, and the new full's checksum is the one a fresh full backup of "
                    "the same snapshot has.  With --from OLDER, the diffs from @OLDER to FILE become one diff "
                    "instead, with the content 'rbd merge-diff' gives.  The new file's manifest names the files "
                    "it was made of.  The chain is left as it is (backups prune or rm take it away).")
    merge.add_argument("file", metavar="FILE")
    merge.add_argument("--format", choices=["raw", "qcow2", "rbddiff"], default=None,
                       help="the new backup's format: raw (default; qcow2 when encrypted) or qcow2 for a full; "
                            "rbddiff with --from")
    merge.add_argument("--from", dest="older", metavar="OLDER",
                       help="merge only the diffs from this earlier point of FILE's chain into one diff")
    merge.add_argument("--identity", type=Path, metavar="FILE",
                       help="the age identity file that opens an encrypted chain (merging reads it)")
    merge.add_argument("--recipient", action="append", default=[], metavar="AGE1…",
                       help="encrypt the merged backup to this public recipient, beside [backup] recipients "
                            "(repeatable); an encrypted chain's merge must name at least one")
    add_signer_option(merge)
    merge.add_argument("--json", action="store_true", help="print a JSON summary")
    merge.set_defaults(func=cmd_merge)

    prune = actions.add_parser(
        "prune", help="remove what a retention policy keeps neither itself nor through a chain",
        description="Per image, by the time its snapshot was taken (local time), keep what the --keep options "
                    "name, as Proxmox Backup Server defines them: keep-last, then the newest backup of each of "
                    "the last N hours, days, ISO weeks, months and years that hold one, not counting periods an "
                    "earlier option kept a backup in.  Every backup a kept one needs is kept too.  Prints what "
                    "stays and why, and what goes; --dry-run changes nothing.  A prune cut short at any moment "
                    "leaves no kept point unrestorable, and the next one ends its removals.")
    prune.add_argument("directory", metavar="DIR")
    for option in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        prune.add_argument(f"--keep-{option}", type=_count, default=0, metavar="N")
    prune.add_argument("--image", metavar="POOL/IMAGE", help="only this image's backups")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    prune.add_argument("--json", action="store_true", help="print the decisions as JSON")
    prune.set_defaults(func=cmd_prune)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def cmd_ls(args) -> int:
    from ..backup.catalog import PROBLEMS, catalog
    from ..errors import BackupError

    entries = catalog(args.directory, image=args.image)
    if args.json:
        emit_json(entries)
    else:
        _print_table(entries)
    broken = [e for e in entries if e.status in PROBLEMS]
    if broken:
        raise BackupError(f"{args.directory}: {len(broken)} of {len(entries)} entries are broken: "
                          f"{', '.join(e.file for e in broken[:3])}{' …' if len(broken) > 3 else ''}")
    return 0


def cmd_rm(args) -> int:
    from ..backup.pruning import remove

    for file in remove(args.file, force=args.force).files:
        print(f"removed {file}")
    return 0


def cmd_merge(args) -> int:
    from ..backup.merge import merge_diffs, synthesize
    from ..errors import UsageError
    from .signals import cooperative

    if args.older is not None and args.format not in (None, "rbddiff"):
        raise UsageError(f"backups merge --from makes one diff, not a {args.format} full")
    if args.older is None and args.format == "rbddiff":
        raise UsageError("backups merge --format rbddiff needs --from OLDER: the point the diff starts from")
    from .backup_cmd import bound_memory
    keys = merge_keys(args)
    bound_memory()
    with cooperative():
        if args.older is not None:
            result = merge_diffs(args.file, args.older.removeprefix("@"), keys=keys)
        else:
            result = synthesize(args.file, fmt=args.format, keys=keys)
    if args.json:
        emit_json(result)
    elif result.kind == "incremental":
        print(f"{result.path}: one diff of {result.image} from @{result.from_snapshot}, made from its chain "
              f"({format_size(result.file_size)}, checksum {result.checksum[:16]}…)")
    else:
        print(f"{result.path}: a {result.format} full backup of {result.image} made from its chain "
              f"({format_size(result.size)}, checksum {result.checksum[:16]}…)")
    return 0


def merge_keys(args):
    """The merge's keys: ``--identity``, and the recipients, signers and signing key of ``[backup]`` (when this
    host has a config) with ``--recipient`` and ``--signer``."""
    from ..backup import identities, parse_recipients, signing_key_of
    from ..backup.merge import Keys
    settings = local_backup_settings(args)
    return Keys(identities=identities(args.identity),
                recipients=parse_recipients([*(settings.recipients if settings else ()), *args.recipient]),
                trust=backup_trust(args, settings),
                signing_key=signing_key_of(settings) if settings is not None else None)


def cmd_prune(args) -> int:
    from ..backup.pruning import prune
    from ..backup.retention import Policy

    policy = Policy(last=args.keep_last, hourly=args.keep_hourly, daily=args.keep_daily, weekly=args.keep_weekly,
                    monthly=args.keep_monthly, yearly=args.keep_yearly)
    result = prune(args.directory, policy, image=args.image, dry_run=args.dry_run)
    if args.json:
        emit_json(result)
        return 0
    for name in result.ended:
        print(f"ended the removal of {name}, which an earlier run left")
    verb = "would remove" if result.dry_run else "removed"
    for d in result.decisions:
        print(f"keep    {d.file}  ({d.reason})" if d.keep else f"{verb}  {d.file}")
    return 0


def _print_table(entries) -> None:
    rows = [("FILE", "POINT", "KIND", "FORMAT", "CREATED", "ON DISK", "PARENT", "CONSISTENCY", "STATUS")]
    for e in entries:
        point = f"{e.image}@{e.snapshot}" if e.image else "-"
        status = e.status if e.problem is None else f"{e.status}: {e.problem}"
        on_disk = format_size(e.on_disk) if e.on_disk is not None else "-"
        consistency = f"{e.consistency} ({e.domain})" if e.consistency else "-"
        rows.append((e.file, point, e.kind or "-", e.format or "-", e.created or "-", on_disk, e.parent or "-",
                     consistency, status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
