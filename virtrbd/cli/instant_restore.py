"""``virtrbd restore --instant`` and the copy behind it: ``--background``, ``--status``, ``--resume``, ``--abort``.

The image is usable as soon as ``--instant`` says so; the copy runs in the
foreground with progress, or with ``--background`` in a process of its own
(its own session, so a closed terminal does not end it) that reports to syslog
and into the image's metadata, where ``--status`` reads it.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from .. import exits
from ..errors import UsageError, VirtrbdError
from ..units import format_size
from .backup_cmd import bound_memory, summary
from .common import backup_trust, emit_json, open_storage
from .progress import terminal_progress
from .signals import cooperative

log = logging.getLogger(__name__)

#: seconds ``--background`` waits at most for its copier to start (it needs ~0.3 s to start and connect)
SPAWN_WAIT = 30.0


def add_instant_options(restore) -> None:
    restore.add_argument("--instant", action="store_true",
                         help="make POOL/IMAGE usable at once, reading SRC (a full backup) in place while its data "
                              "is copied into Ceph; committed only when SRC's checksums match")
    restore.add_argument("--background", action="store_true",
                         help="with --instant or --resume: return once the image is usable; the copy goes on in "
                              "a process of its own (see --status)")
    restore.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)    # the copier --background starts
    restore.add_argument("--no-copy", action="store_true",
                         help="with --instant: stop once the image is usable; --resume copies later (until then "
                              "the image reads the backup file, which stays in use)")
    steps = restore.add_mutually_exclusive_group()
    steps.add_argument("--status", metavar="POOL/IMAGE", help="where an instant restore into POOL/IMAGE stands")
    steps.add_argument("--resume", metavar="POOL/IMAGE", help="continue an instant restore's copy that was stopped")
    steps.add_argument("--abort", metavar="POOL/IMAGE",
                       help="take back an uncommitted instant restore: its image is removed (no client may have "
                            "it open)")


def instant_asked(args) -> bool:
    return bool(args.instant or args.background or args.no_copy or args.status or args.resume or args.abort)


def cmd_instant(args) -> int:
    named = args.status or args.resume or args.abort
    if args.force or args.snapshot or args.domain_set or args.suffix:
        raise UsageError("restore: --force, --snapshot and --domain-set do not go with an instant restore")
    if named:
        if args.src is not None or args.target is not None or args.instant:
            raise UsageError("restore: --status, --resume and --abort take only POOL/IMAGE")
        if args.no_copy:
            raise UsageError("restore: --no-copy goes with --instant")
        if (args.background or args.detached) and not args.resume:
            raise UsageError("restore: --background goes with --instant or --resume")
        if args.status:
            return _status(args)
        if args.abort:
            return _abort(args)
        return _copy(args, args.resume)
    if not args.instant:
        raise UsageError(f"restore: {'--no-copy' if args.no_copy else '--background'} goes with --instant")
    if args.no_copy and args.background:
        raise UsageError("restore: --no-copy and --background: choose one")
    if args.src is None or args.target is None:
        raise UsageError("restore --instant: name SRC (a full backup) and POOL/IMAGE")
    return _start(args)


def _start(args) -> int:
    from ..backup import instant, plan_restore
    from ..backup.instant_copy import COPY_CONFIG
    bound_memory()
    storage, target = open_storage(args, args.target, snapshot=False, ceph_options=COPY_CONFIG)
    plan = plan_restore(args.src, refuse_sealed=instant.SEALED,
                        trust=backup_trust(args, storage.config.backup))
    instant.check_plan(plan)                            # a bad file, or an incremental alone, fails before connecting
    with storage:
        record = storage.restore_instantly(plan, target)
        if not args.json:
            if plan.newest.kind == "incremental":
                print(f"{args.src} is an incremental: restoring {record.file}, a full backup of its point")
            print(f"{target} is usable now: it reads {record.file} until the copy is committed "
                  f"(checked before use: {instant.CHECKED_BEFORE}; during the copy: {instant.CHECKED_DURING})",
                  flush=True)
        if args.no_copy:
            if args.json:
                emit_json({"image": str(target), "file": record.file, "usable": True, "copier_pid": None})
            else:
                print(f"the copy waits: virtrbd restore --resume {target}")
            return 0
        if args.background:
            pid = _spawn_copier(args, str(target), record.marker)
            if args.json:
                emit_json({"image": str(target), "file": record.file, "usable": True, "copier_pid": pid})
            else:
                print(f"copying in process {pid}; see virtrbd restore --status {target}")
            return 0
        return _copy_connected(args, storage, str(target))


def _copy(args, target: str) -> int:
    from ..backup.instant_copy import COPY_CONFIG
    bound_memory()
    storage, spec = open_storage(args, target, snapshot=False, ceph_options=COPY_CONFIG)
    if args.background:
        from ..backup import instant
        with storage:
            found = storage.instant_restore_status(spec)
            if found.state not in ("stopped", "failed", "committed"):
                raise UsageError(f"restore --resume {spec}: nothing to resume (it is {found.state})")
            marker = instant.load(storage.cluster, spec).marker
        print(f"copying in process {_spawn_copier(args, str(spec), marker)}; see virtrbd restore --status {spec}")
        return 0
    with storage:
        return _copy_connected(args, storage, str(spec))


def _copy_connected(args, storage, target: str) -> int:
    token = exits.note_at_forced_exit(f"{target} stays usable, its copy stopped: virtrbd restore --resume {target}")
    try:
        with cooperative():
            result = storage.continue_instant_restore(target, progress=terminal_progress(f"copy into {target}"))
    except VirtrbdError as exc:
        if args.detached:
            _syslog(f"instant restore into {target}: {exc}")
        raise
    finally:
        exits.forget(token)
    if args.detached:
        _syslog(f"instant restore into {target}: committed in {result.seconds:.1f} s")
    if args.json:
        emit_json(summary(result, committed=True))
    else:
        print(f"committed {result.image} ({format_size(result.size)} from {result.file}, checksums match) in "
              f"{result.seconds:.2f} s; the backup file is no longer needed by it")
    return 0


def _status(args) -> int:
    storage, spec = open_storage(args, args.status, snapshot=False)
    with storage:
        found = storage.instant_restore_status(spec)
    if args.json:
        emit_json(found)
        return 0
    if found.state == "none":
        print(f"{found.image}: no instant restore in progress (none was started, or it was committed)")
        return 0
    line = f"{found.image}: {found.state}"
    if found.file:
        line += f", from {found.file} ({found.format})"
    if found.total:
        line += f", {format_size(found.done)} of {format_size(found.total)} copied"
    line += f", checksums {found.checked}"
    if found.copier:
        line += f", copier {found.copier}"
    print(line)
    if found.error:
        print(f"error: {found.error}")
    if found.state == "stopped":
        print(f"no process copies it now: virtrbd restore --resume {found.image}")
    return 0


def _abort(args) -> int:
    storage, spec = open_storage(args, args.abort, snapshot=False)
    with storage:
        storage.abort_instant_restore(spec)
    print(f"aborted the instant restore into {spec}: the image is removed, the backup file released")
    return 0


def _spawn_copier(args, target: str, marker: str) -> int:
    """``virtrbd restore --resume TARGET`` in a session of its own, detached from this terminal; returns once
    it holds the copy's lock (or has ended), so that ``--status`` right after never says "stopped"."""
    from ..backup import in_use
    argv = [sys.executable, "-m", "virtrbd"] + (["--config", args.config] if args.config else []) + \
        ["restore", "--resume", target, "--detached"]
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + SPAWN_WAIT
    while not in_use.copy_running(Path(marker)) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return child.pid


def _syslog(text: str) -> None:
    import syslog
    syslog.openlog("virtrbd", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_INFO, text)
