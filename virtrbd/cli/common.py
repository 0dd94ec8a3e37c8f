"""What every subcommand shares: argument parsing that fails in one line, output, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import UsageError
from ..spec import ImageSpec

if TYPE_CHECKING:
    from ..storage import Storage


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("virtrbd").strip()     # main() puts "virtrbd: " in front
        raise UsageError(f"{command + ': ' if command else ''}{message} (see --help)")


def divert_native_stderr() -> None:
    """Keep librados' and libvirt's C-level chatter out of the user's terminal.

    librados writes some diagnostics straight to file descriptor 2 whatever its
    log settings (e.g. every cephx retry with a wrong key).  Python's
    ``sys.stderr`` is moved to a duplicate of the original descriptor and fd 2
    itself is pointed at /dev/null, so our one-line errors still reach the user
    and nothing else does.  ``--debug`` skips this.
    """
    saved = os.dup(2)
    sys.stderr.flush()
    sys.stderr = io.TextIOWrapper(os.fdopen(saved, "wb", buffering=0), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def jsonable(value: Any) -> Any:
    """Dataclasses, specs, datetimes and tuples as plain JSON values."""
    if isinstance(value, ImageSpec):
        return str(value)  # reads best as POOL/IMAGE[@SNAP]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def emit_json(data: Any) -> None:
    json.dump(jsonable(data), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def open_storage(args, spec: str, *, snapshot: bool | None = None, **options: Any) -> tuple[Storage, ImageSpec]:
    """The ``Storage`` of ``--config`` and ``spec`` parsed with its default pool, not yet connected: a bad
    name fails here, before anything is contacted.  ``snapshot`` True/False requires or forbids '@SNAP'."""
    from ..storage import Storage
    storage = Storage(args.config, **options)
    return storage, storage.spec(spec, snapshot=snapshot)


def local_backup_settings(args):
    """``[backup]`` of virtrbd.conf, for commands that work on backup files alone: None when no config is
    named and the default one is absent (a host that only checks backups may have none)."""
    from .. import config
    path = config.resolve_path(args.config)
    if args.config or os.environ.get(config.ENV_VAR) or path.exists():
        return config.load(path).backup
    return None


def backup_trust(args, settings=None):
    """The signers ``verify``, ``restore`` and ``merge`` believe: ``[backup]`` of virtrbd.conf (``settings``,
    else the local config's) and ``--signer``."""
    from ..backup.trust import Trust
    return Trust.of(settings or local_backup_settings(args), args.signer or ())


def add_signer_option(parser) -> None:
    parser.add_argument("--signer", action="append", metavar="SIGNER",
                        help="trust manifests signed by this public signer (virtrbd-signer1…) too, beside "
                             "[backup] signers; once any signer is known, unsigned manifests are refused "
                             "(repeatable)")


def size_arg(text: str) -> int:
    from ..units import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
