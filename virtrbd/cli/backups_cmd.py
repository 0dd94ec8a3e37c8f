"""``virtrbd backups``: what a backup directory holds, from secondary storage alone (no cluster)."""

from __future__ import annotations

from ..units import format_size
from .common import emit_json


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


def _print_table(entries) -> None:
    rows = [("FILE", "POINT", "KIND", "FORMAT", "CREATED", "ON DISK", "PARENT", "STATUS")]
    for e in entries:
        point = f"{e.image}@{e.snapshot}" if e.image else "-"
        status = e.status if e.problem is None else f"{e.status}: {e.problem}"
        on_disk = format_size(e.on_disk) if e.on_disk is not None else "-"
        rows.append((e.file, point, e.kind or "-", e.format or "-", e.created or "-", on_disk, e.parent or "-",
                     status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
