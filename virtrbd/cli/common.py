"""What every subcommand shares: argument parsing that fails in one line, output, exit codes."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any, NoReturn

from ..errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


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


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def size_arg(text: str) -> int:
    from ..units import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
