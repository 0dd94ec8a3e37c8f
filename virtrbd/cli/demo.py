"""``virtrbd demo``: the guided tour on the embedded lab (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..demo.settings import DemoSettings


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the whole mission on the embedded lab, with a timed report")
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab, the domains, the images and the backups to explore")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--report", type=Path, default=Path("virtrbd-demo-report.txt"),
                        help="also write the report here (default ./virtrbd-demo-report.txt)")
    parser.add_argument("--domains", type=_count(1, 500), default=DemoSettings.domains,
                        help="domains to define (default 100)")
    parser.add_argument("--batch", type=_count(1, 100), default=DemoSettings.batch,
                        help="Linux guests to start (default 10)")
    parser.add_argument("--dir", type=Path, default=None, help="lab folder (default as 'virtrbd lab')")
    parser.set_defaults(func=cmd_demo)


def _count(low: int, high: int):
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: a number from {low} to {high}")
        return int(text)
    return parse


def cmd_demo(args) -> int:
    if args.batch > args.domains:
        from ..errors import UsageError
        raise UsageError(f"demo: --batch {args.batch} is more than --domains {args.domains}")
    from ..demo.tour import run
    from ..lab import Lab

    lab = Lab(args.dir)
    settings = DemoSettings(domains=args.domains, batch=args.batch, keep=args.keep)
    progress = (lambda text: print(text, file=sys.stderr, flush=True)) if sys.stderr.isatty() else (lambda text: None)
    report = run(lab, settings, report_path=args.report, progress=progress)
    print(report.to_json() if args.json else report.table())
    if not args.json:
        print(f"\nreport written to {args.report}")
        if args.keep:
            print("\nthe lab is still running, with the domains, images and backups; try:")
            for line in lab.env_lines():
                print(f"  {line}")
            print("  virsh list --all; virtrbd ls; virtrbd info demo-golden; virtrbd children demo-golden@golden")
            print(f"  ls -l {lab.root / 'secondary-storage'}; virsh start demo-vm042   # the hook clones at boot")
            print("tear it all down with: virtrbd lab down")
    return 0 if report.ok else 1
