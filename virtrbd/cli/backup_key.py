"""``virtrbd backup-key new|show``: the keys of encrypted and signed backups.

An age identity (private, kept off the hypervisors) and its recipient (public,
in ``[backup] recipients``) encrypt; a signing key (private, on the hypervisor
that writes backups: ``[backup] signing_key``) and its signer (public, in
``[backup] signers`` wherever backups are verified or restored) authenticate.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .common import emit_json


def add_parser(subparsers) -> None:
    key = subparsers.add_parser("backup-key", help="keys of encrypted backups: an identity (private, kept off "
                                                   "the hypervisors) and its recipient (public, in virtrbd.conf); "
                                                   "with --signing, a key that signs manifests")
    actions = key.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="write a new identity (or, with --signing, a signing key) to a new "
                                         "file (0600) and print its public half")
    new.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="the key file to create (never over an existing one); age -d -i FILE reads an identity")
    new.add_argument("--signing", action="store_true",
                     help="a signing key for [backup] signing_key: this host signs the manifests it writes, and "
                          "verify and restore elsewhere trust its signer ([backup] signers)")
    new.add_argument("--json", action="store_true", help="machine-readable output")
    new.set_defaults(func=cmd_new)
    show = actions.add_parser("show", help="print the public half of a key file: the recipients of an identity "
                                           "file, or the signer of a signing key")
    show.add_argument("file", type=Path, metavar="FILE")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)


def cmd_new(args) -> int:
    if args.signing:
        from ..backup.sealing.signing import write_signing_key
        signer = write_signing_key(args.out).signer
        if args.json:
            emit_json({"signing_key_file": str(args.out.absolute()), "signer": str(signer),
                       "fingerprint": signer.fingerprint})
        else:
            print(f"wrote signing key {args.out} (0600): name it in [backup] signing_key on this host")
            print(f"its signer, for [backup] signers wherever backups are verified or restored: {signer}")
        return 0
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
    from ..backup.sealing.signing import read_signing_key
    publics: list = []
    try:
        publics = [identity.recipient for identity in read_identities(args.file)]
        kind = "recipient"
    except UsageError as not_identity:
        try:
            publics = [read_signing_key(args.file).signer]
        except UsageError:
            raise not_identity from None
        kind = "signer"
    if args.json:
        emit_json([{kind: str(key), "fingerprint": key.fingerprint} for key in publics])
    else:
        for key in publics:
            print(key)
    return 0
