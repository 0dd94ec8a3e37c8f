"""``virtrbd backup --domain`` and ``virtrbd restore --domain-set``: a domain's disks as one set of backups."""

from __future__ import annotations

from ..domains.request import check_request
from ..errors import UsageError
from ..units import format_size
from .backup_cmd import bound_memory, summary
from .common import emit_json
from .progress import terminal_progress
from .signals import cooperative


def cmd_backup_domain(args) -> int:
    if args.domain is None or args.name is None or args.snapshot is None or args.dest is not None:
        raise UsageError("backup --domain NAME --name SNAP DEST: the destination only, no POOL/IMAGE@SNAP")
    check_request(args.name, args.quiesce, args.freeze_timeout)
    bound_memory()
    from ..storage import Storage
    with Storage(args.config) as storage, cooperative():
        made = storage.backup_domain(args.domain, args.name, args.snapshot, format=args.format, since=args.since,
                                     quiesce=args.quiesce, freeze_timeout=args.freeze_timeout,
                                     progress=terminal_progress(f"backup of {args.domain}@{args.name}"))
    if args.json:
        emit_json({"domain": made.domain, "uuid": made.uuid, "snapshot": made.snapshot,
                   "consistency": made.consistency, "taken": made.taken.describe() if made.taken else None,
                   "backups": [summary(result) for result in made.backups]})
        return 0
    if made.taken is not None:
        print(f"took {made.taken.describe()}")
    for result in made.backups:
        print(f"backed up {result.image} ({format_size(result.data_bytes)} of data) to {result.path} "
              f"[{result.format}, {format_size(result.file_size)}] in {result.seconds:.2f} s")
    print(f"domain {made.domain}: {len(made.backups)} disk(s) at {made.snapshot}, {made.consistency}-consistent")
    return 0


def cmd_restore_set(args) -> int:
    if args.target is not None:
        raise UsageError("restore --domain-set SRC takes no POOL/IMAGE: each disk goes to its own image "
                         "(--suffix to rename them)")
    from ..backup.tuning import RESTORE_CONFIG
    bound_memory()
    from ..storage import Storage
    storage = Storage(args.config, ceph_options=RESTORE_CONFIG)
    with storage, cooperative():
        done = storage.restore_domain_set(args.src, suffix=args.suffix, force=args.force,
                                          create_snapshot=args.snapshot,
                                          progress=terminal_progress(f"restore of the set of {args.src}"))
    if args.json:
        emit_json([summary(result) for result in done])
        return 0
    for result in done:
        print(f"restored {result.image} (@{result.snapshot}, {format_size(result.size)}) in {result.seconds:.2f} s"
              + (" — replaced the old image" if result.replaced else ""))
    return 0
