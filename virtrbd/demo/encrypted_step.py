"""The demo's encrypted backup: written by a hypervisor that holds only a public recipient and its own
signing key, authenticated without any private key, read back with the operator's identity, which lives
elsewhere (here: folders of their own, gone after the step)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import VirtrbdError
from ..units import format_size


class EncryptionFailure(VirtrbdError):
    """An encrypted backup that reads in the clear, or does not give back its snapshot."""


def backup_and_restore(tour, step, prefix: str) -> str:
    with tempfile.TemporaryDirectory(prefix="virtrbd-demo-operator-") as operator, \
            tempfile.TemporaryDirectory(prefix="virtrbd-demo-hypervisor-") as hypervisor:
        identity = Path(operator) / "operator.key"
        key = tour.cli("backup-key", "new", "--out", str(identity))
        signing = tour.cli("backup-key", "new", "--signing", "--out", str(Path(hypervisor) / "signing.key"))
        conf = Path(hypervisor) / "virtrbd.conf"
        conf.write_text(tour.lab.conf_file.read_text() + f"\n[backup]\nsigning_key = {hypervisor}/signing.key\n")
        dest = tour.backups / "encrypted"
        dest.mkdir(parents=True, exist_ok=True, mode=0o711)
        made = tour.cli("backup", tour.snap2, str(dest), "--recipient", key["recipient"], config=conf)
        with open(made["path"], "rb") as sealed:
            if not sealed.read(22) == b"age-encryption.org/v1\n":
                raise EncryptionFailure(f"{made['path']}: not an age file")
        checked = tour.cli("verify", made["path"], "--signer", signing["signer"])
        if not checked["signature"].startswith("authenticated"):
            raise EncryptionFailure(f"{made['path']}: not authenticated: {checked['signature']}")
        target = f"{tour.storage.config.ceph.pool}/{prefix}-decrypted"
        refused = _refused(tour, "restore", made["path"], target)
        restored = tour.cli("restore", made["path"], target, "--identity", str(identity), "--signer",
                            signing["signer"])
    if tour._digest(target) != tour._digest(tour.snap2):
        raise EncryptionFailure(f"{target} differs from {tour.snap2}")
    step.figures = {"backup_seconds": made["seconds"], "restore_seconds": restored["seconds"],
                    "file_size": made["file_size"]}
    return (f"{Path(made['path']).name} ({made['format']}, {format_size(made['file_size'])}) encrypted to the "
            f"operator's recipient {key['recipient'][:16]}…, its manifest signed by the hypervisor and "
            f"authenticated without any private key; without the identity: \"{refused}\"; with it "
            f"{target} equals {tour.snap2} (SHA-256), in {restored['seconds']:.2f} s")


def _refused(tour, *args: str) -> str:
    """What the product says when it is asked without the identity (it must refuse)."""
    try:
        tour.cli(*args)
    except VirtrbdError as exc:
        said = str(exc)
        at = said.rfind(": encrypted")              # the reason, after the file's path
        return said[at + 2:][:90] if at >= 0 else said[-90:]
    raise EncryptionFailure(f"virtrbd {' '.join(args)} went through without the identity")

