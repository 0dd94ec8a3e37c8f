"""The ``virtrbd`` command: ``run`` is the console script's entry point, ``main`` the same for callers in-process.

Exit codes: 0 success, 1 a failure met at run time, 2 bad usage or bad
configuration, 130 interrupted.  Every failure is one line on stderr; a
traceback only with ``--debug``.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys

from .. import __version__, allocator, exits
from ..errors import UsageError, VirtrbdError
from . import signals
from .common import Parser, divert_native_stderr

log = logging.getLogger("virtrbd")

#: The modules of this package that add commands, in the order of ``--help``, with the commands each
#: adds.  A call loads only the module of the command it names: loading them all (the lab's, the
#: demo's, ...) and building every subparser made every command start slower (docs/performance.md).
COMMAND_MODULES = {
    "images": ("ls", "create", "resize", "info", "rm"),
    "snapshots": ("snap",),
    "layering": ("golden", "clone", "children", "flatten"),
    "config_cmd": ("config",),
    "lab": ("lab",),
    "demo": ("demo",),
    "xml_cmd": ("xml",),
    "hook_cmd": ("hook",),
    "backup_cmd": ("backup", "restore", "verify"),
    "backups_cmd": ("backups",),
    "backup_key": ("backup-key",),
}


def command_named(argv: list[str]) -> str | None:
    """The command word of ``argv``: its first word that is neither an option nor the value of ``--config``.

    None when a help option comes first: ``virtrbd --help restore`` asks for
    the help of the whole command, which lists every subcommand.
    """
    words = iter(argv)
    for word in words:
        if word == "-h" or (word.startswith("--h") and "--help".startswith(word)):
            return None
        if word.startswith("--c") and "--config".startswith(word):
            next(words, None)                   # --config PATH, or argparse's abbreviation of it
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> Parser:
    """The parser; when ``argv`` names a known command, with that command's module alone.

    Without one (``--help``, a typo) every command is there, so help and
    errors list them all.
    """
    command = command_named(argv or [])
    modules = [m for m, names in COMMAND_MODULES.items() if command in names] or list(COMMAND_MODULES)
    parser = Parser(prog="virtrbd", description="Manage Ceph RBD storage for KVM through libvirt and librbd.")
    parser.add_argument("--config", metavar="PATH",
                        help="virtrbd.conf to use (default $VIRTRBD_CONF, else /etc/virtrbd/virtrbd.conf)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what is being done")
    parser.add_argument("--debug", action="store_true", help="debug logging, tracebacks, librados' own messages")
    parser.add_argument("--version", action="version", version=f"virtrbd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for module in modules:
        importlib.import_module(f"{__package__}.{module}").add_parser(commands)
    return parser


def run() -> None:
    """The ``virtrbd`` process (console script, ``python -m virtrbd``): ``main()``, then exit.

    The interpreter's shutdown ends with a garbage collection that walks every
    object the command made, a cost every call paid.  Freezing them
    first skips that walk.  What it could still find is only cyclic garbage:
    the Ceph connection is closed by then, and the standard streams are
    flushed at exit whatever the collector does.
    """
    allocator.one_arena()           # before the signal watcher, the first thread (see allocator)
    signals.install()
    code = main()
    signals.said_last_line(code)
    if exits.stuck_calls():         # a librbd call never returned: finalizing its objects would wait, or abort
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = None
    try:
        args = build_parser(argv).parse_args(argv)
        level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
        if not args.debug:
            divert_native_stderr()
        logging.basicConfig(level=level, stream=sys.stderr, format="virtrbd: %(message)s")
        return args.func(args) or 0
    except UsageError as exc:
        return _last_line(str(exc), exc.exit_code)
    except VirtrbdError as exc:
        log.debug("failure", exc_info=True)
        return _last_line(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _last_line("interrupted", signals.EXIT_CODE)
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line, details with --debug
        if args is not None and args.debug:
            raise
        return _last_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)", 1)


def _last_line(text: str, code: int) -> int:
    """The command's one line on stderr; the signal watcher then adds none of its own."""
    signals.said_last_line(code)
    print(f"virtrbd: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    run()
