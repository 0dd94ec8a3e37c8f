"""Entry point of the ``virtrbd`` console script.

Exit codes: 0 success, 1 a failure met at run time, 2 bad usage or bad
configuration, 130 interrupted.  Every failure is one line on stderr; a
traceback only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys

from .. import __version__
from ..errors import UsageError, VirtrbdError
from . import backup_cmd, config_cmd, demo, hook_cmd, images, lab, layering, snapshots, xml_cmd
from .common import Parser, divert_native_stderr

log = logging.getLogger("virtrbd")


def build_parser() -> Parser:
    parser = Parser(prog="virtrbd", description="Manage Ceph RBD storage for KVM through libvirt and librbd.")
    parser.add_argument("--config", metavar="PATH",
                        help="virtrbd.conf to use (default $VIRTRBD_CONF, else /etc/virtrbd/virtrbd.conf)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what is being done")
    parser.add_argument("--debug", action="store_true", help="debug logging, tracebacks, librados' own messages")
    parser.add_argument("--version", action="version", version=f"virtrbd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    images.add_parser(commands)
    snapshots.add_parser(commands)
    layering.add_parser(commands)
    config_cmd.add_parser(commands)
    lab.add_parser(commands)
    demo.add_parser(commands)
    xml_cmd.add_parser(commands)
    hook_cmd.add_parser(commands)
    backup_cmd.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
        if not args.debug:
            divert_native_stderr()
        logging.basicConfig(level=level, stream=sys.stderr, format="virtrbd: %(message)s")
        return args.func(args) or 0
    except UsageError as exc:
        print(f"virtrbd: {exc}", file=sys.stderr)
        return exc.exit_code
    except VirtrbdError as exc:
        log.debug("failure", exc_info=True)
        print(f"virtrbd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("virtrbd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line, details with --debug
        if args is not None and args.debug:
            raise
        print(f"virtrbd: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
