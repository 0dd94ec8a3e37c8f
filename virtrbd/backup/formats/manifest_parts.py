"""The parts of a manifest that are objects of their own: a domain's set, an encrypted backup's facts, a signature.

Checked here for ``manifest.load``; what the fields mean is in ``manifest``'s docstring.
"""

from __future__ import annotations


def is_lower_hex(text, digits: int) -> bool:
    """``text`` is a string of exactly ``digits`` lowercase hexadecimal digits (as hexdigest() writes)."""
    return isinstance(text, str) and len(text) == digits and all(c in "0123456789abcdef" for c in text)


def check_encryption(m, bad) -> None:
    e = m.encryption or {}
    if set(e) != {"format", "recipients", "plain_size", "head_bytes", "head_sha256", "rest_sha256"} \
            or e["format"] != "age-encryption.org/v1":
        bad("encryption should name format age-encryption.org/v1, recipients, plain_size, head_bytes and the "
            "two SHA-256 digests")
    recipients = e["recipients"]
    if not (isinstance(recipients, list) and recipients and all(is_lower_hex(r, 16) for r in recipients)):
        bad("encryption recipients should be fingerprints of 16 lowercase hex digits")
    for name in ("plain_size", "head_bytes"):
        if not isinstance(e[name], int) or isinstance(e[name], bool) or e[name] < 0:
            bad(f"encryption {name} should be a whole number")
    if not (is_lower_hex(e["head_sha256"], 64) and is_lower_hex(e["rest_sha256"], 64)):
        bad("encryption digests should be 64 lowercase hex digits")


def check_signature(m, bad) -> None:
    sig = m.signature or {}
    if set(sig) != {"algorithm", "signer", "value"} or sig["algorithm"] != "ed25519" \
            or not isinstance(sig["signer"], str) or not sig["signer"].startswith("virtrbd-signer1") \
            or not is_lower_hex(sig["value"], 128):
        bad("signature should be {'algorithm': 'ed25519', 'signer': 'virtrbd-signer1…', 'value': 128 lowercase "
            "hex digits}")


#: what a domain's backup set may say of its snapshot: "unknown" when it was not taken by virtrbd
DOMAIN_CONSISTENCIES = ("application", "crash", "unknown")


def check_domain(m, bad) -> None:
    domain = m.domain or {}
    disks = domain.get("disks")
    if set(domain) != {"name", "uuid", "consistency", "disks"} or not isinstance(domain["name"], str) \
            or not isinstance(domain["uuid"], str) or domain["consistency"] not in DOMAIN_CONSISTENCIES \
            or not isinstance(disks, list) or not disks:
        disks = []
        bad("domain should be {'name', 'uuid', 'consistency', 'disks'} with a consistency of "
            f"{', '.join(DOMAIN_CONSISTENCIES)} and at least one disk")
    for disk in disks:
        if not isinstance(disk, dict) or set(disk) != {"target", "image", "file"} \
                or not all(isinstance(value, str) for value in disk.values()) \
                or "/" in disk["file"] or disk["file"].startswith("."):
            bad("each disk of domain should be {'target', 'image', 'file'}, the file a plain name")
    if m.file not in [disk["file"] for disk in disks]:
        bad(f"domain does not list this backup ({m.file}) among its disks")
