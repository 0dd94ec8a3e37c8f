"""What every subcommand shares: argument parsing that fails in one line, output, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

from ..errors import UsageError
from ..spec import ImageSpec
from ..units import format_size


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


def terminal_progress(label: str, *, counts_bytes: bool = True) -> Callable[[int, int], int] | None:
    """A progress callback that redraws one line on a terminal; None when stderr is not one.

    ``counts_bytes``: done and total are bytes, so a rate is shown; librbd's
    own callbacks (flatten, rollback) count objects and show none.
    """
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()

    def report(done: int, total: int) -> int:
        percent = 100 * done // total if total else 100
        elapsed = time.monotonic() - started
        rate = f", {format_size(done / elapsed)}/s" if counts_bytes and done and elapsed > 0 else ""
        eta = f", {elapsed * (total - done) / done:.0f} s left" if done and done < total else ""
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label}: {percent:3d}%{rate}{eta}   {end}")
        return 0

    return report


def size_arg(text: str) -> int:
    from ..units import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
