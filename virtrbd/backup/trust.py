"""Whose manifests a host believes: the signers it trusts, and the check of a manifest's signature.

A host that knows no signer verifies what it can (a signature against the key
it names, which catches an edit but not a forgery) and says so; once it knows
one (``[backup] signers``, ``--signer``, or its own ``signing_key``), it
refuses a manifest that is unsigned or signed by any other key, so a forged
backup, or a real one stripped of its signature, is never restored.
The Ed25519 code (``sealing.signing``, libcrypto through ctypes) is loaded
only where there is a signer or a signature to check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CorruptBackupError, UsageError
from .formats.manifest import Manifest

if TYPE_CHECKING:
    from .sealing.signing import Signer


@dataclass(frozen=True)
class Trust:
    """The public signers whose manifests are believed; none: every manifest is judged on its own."""

    signers: tuple[Signer, ...] = ()

    @classmethod
    def of(cls, settings=None, extra: Iterable[str] = ()) -> Trust:
        """From virtrbd.conf's ``[backup]`` (its signers and its signing key's public half) and ``extra``."""
        found: dict[bytes, Signer] = {}
        texts = [*(settings.signers if settings is not None else ()), *extra]
        own_key = settings.signing_key if settings is not None else None
        if not texts and own_key is None:
            return cls()
        from .sealing.signing import parse_signer, read_signing_key
        for signer in (parse_signer(str(text)) for text in texts):
            found.setdefault(signer.public, signer)
        if own_key is not None:
            own = read_signing_key(own_key).signer
            found.setdefault(own.public, own)
        return cls(tuple(found.values()))

    def authenticate(self, m: Manifest) -> str:
        """What the signature establishes, in a few words; a CorruptBackupError in one line when it fails."""
        if m.signature is None:
            if self.signers:
                raise CorruptBackupError(
                    f"{m.path}: the manifest is not signed, and this host believes only manifests signed by "
                    f"its signers ([backup] signers, signing_key, --signer): forged, or stripped of its signature?")
            return "unsigned"
        from .sealing.signing import parse_signer
        try:
            signer = parse_signer(m.signature["signer"])
        except UsageError as exc:
            raise CorruptBackupError(f"{m.path}: the manifest's {exc}") from None
        if not signer.verifies(m.signed_bytes(), bytes.fromhex(m.signature["value"])):
            raise CorruptBackupError(f"{m.path}: the manifest's signature does not match its fields: it was "
                                     f"changed after signer {signer.fingerprint} signed it")
        if not self.signers:
            return f"signed by {signer.fingerprint} (no trusted signers configured: not authenticated)"
        if signer not in self.signers:
            raise CorruptBackupError(f"{m.path}: signed by {signer}, which this host does not trust "
                                     f"([backup] signers, --signer)")
        return f"authenticated: signed by trusted signer {signer.fingerprint}"
