"""``virtrbd backup-key new|show``: the age identities whose public recipients backups are encrypted to."""

from __future__ import annotations

from pathlib import Path

from .common import emit_json


def add_parser(subparsers) -> None:
    key = subparsers.add_parser("backup-key", help="keys of encrypted backups: an identity (private, kept off "
                                                   "the hypervisors) and its recipient (public, in virtrbd.conf)")
    actions = key.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="write a new identity to a new file (0600) and print its recipient")
    new.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="the identity file to create (never over an existing one); age -d -i FILE reads it too")
    new.add_argument("--json", action="store_true", help="machine-readable output")
    new.set_defaults(func=cmd_new)
    show = actions.add_parser("show", help="print the recipients of an identity file")
    show.add_argument("file", type=Path, metavar="FILE")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)


def cmd_new(args) -> int:
    from ..backup.sealing.keys import write_identity
    identity = write_identity(args.out)
    if args.json:
        emit_json({"identity_file": str(args.out.absolute()), "recipient": str(identity.recipient),
                   "fingerprint": identity.recipient.fingerprint})
    else:
        print(f"wrote identity {args.out} (0600): keep it, and a copy, away from the hypervisors")
        print(f"its recipient, for [backup] recipients in virtrbd.conf: {identity.recipient}")
    return 0


def cmd_show(args) -> int:
    from ..backup.sealing.keys import read_identities
    recipients = [identity.recipient for identity in read_identities(args.file)]
    if args.json:
        emit_json([{"recipient": str(r), "fingerprint": r.fingerprint} for r in recipients])
    else:
        for recipient in recipients:
            print(recipient)
    return 0
