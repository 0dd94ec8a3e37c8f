"""``virtrbd demo``: the guided tour on the embedded lab (what ``make demo`` runs)."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import demo
from ..lab import Lab


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="a guided tour of virtrbd on the embedded lab")
    parser.add_argument("--keep", action="store_true", help="leave the lab running afterwards to explore")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--report", type=Path, default=Path("virtrbd-demo-report.txt"),
                        help="also write the report here (default ./virtrbd-demo-report.txt)")
    parser.add_argument("--dir", type=Path, default=None, help="lab folder (default as 'virtrbd lab')")
    parser.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    lab = Lab(args.dir)
    progress = (lambda text: print(text, file=sys.stderr)) if sys.stderr.isatty() else (lambda text: None)
    report = demo.run(lab, keep=args.keep, report_path=args.report, progress=progress)
    print(report.to_json() if args.json else report.table())
    if not args.json:
        print(f"\nreport written to {args.report}")
        if args.keep:
            print("the lab is still running; try:")
            for line in lab.env_lines():
                print(f"  {line}")
            print("  virtrbd ls; virsh pool-list; virsh vol-list "
                  f"{lab.status().get('libvirt', {}).get('pool', 'virtrbd-lab')}")
            print("tear it down with: virtrbd lab down")
    return 0 if report.ok else 1
