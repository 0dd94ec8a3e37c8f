"""The JSON manifest beside every backup file, and how backup files are named.

Names (in the destination directory; ``~`` never occurs in pool, image or
snapshot names, so a name cannot be read two ways; no ``@``, which ``rbd
import`` refuses in a path)::

    POOL~IMAGE~SNAP.raw | .qcow2            a full backup
    POOL~IMAGE~OLDER~SNAP.rbddiff           an incremental: OLDER -> SNAP, rbd diff v1
    <backup file>.manifest.json             its manifest

A backup exists once its manifest exists: the data file is published first,
the manifest second, so a data file without a manifest is the remains of an
interrupted publication and the next backup of that snapshot replaces it.

Manifest fields (version 2; version 1, written before file_checksum, is still read)::

    manifest_version 2
    kind             "full" | "incremental"
    format           "raw" | "qcow2" | "rbd-diff-v1"
    file, file_size  the backup file's name (same directory) and exact size in bytes
    image            "POOL/IMAGE";  image_id: librbd's id (a renamed or recreated image differs)
    snapshot, snapshot_id, size, object_size
    snapshot_time    when the snapshot was taken (UTC, ISO 8601; librbd's), what pruning goes by
    made_from        a synthetic full (backups merge): the files it was made of, full first
    from_snapshot    incremental: the older snapshot
    parent           incremental: {"file": backup file of from_snapshot, "checksum": its checksum value}
    checksum         {"algorithm", "value", "chunk_size"?, "data_crc32c"?}
                       full: "xxh3-128-of-4MiB-chunk-xxh3-128" of the image's logical content
                       (older: "sha256-of-4MiB-chunk-sha256" with data_crc32c, the CRC-32C
                       their restore checks, checksum.DataCRC)
                       incremental: "xxh3-128" (older: "sha256") of the diff stream (the file's
                       bytes: its logical content)
    file_checksum    {"algorithm": "crc32c", "value"}: the backup file's bytes as written (file_crc), so a
                       changed byte of its structure is caught too, not only of the content it holds
    cluster_size     qcow2 only
    created, tool    UTC time (ISO 8601), "virtrbd X.Y.Z"
    stats            bytes read, data bytes, seconds (informational)
    domain           a backup of a domain's disks at one instant (``backup --domain``), left out otherwise:
                       {"name", "uuid", "consistency": "application" | "crash" | "unknown",
                        "disks": [{"target", "image", "file"}, …]}, every disk of the set with its
                       backup file (same directory), this one included
    encryption       an encrypted backup (left out otherwise): the file is age-encryption.org/v1 to public
                       recipients, and ``age -d`` gives back what the other fields describe (file_checksum
                       and checksum are of that plaintext; file_size is the encrypted file's):
                       {"format", "recipients": [fingerprints], "plain_size", "head_bytes", "head_sha256",
                        "rest_sha256"} — the SHA-256 of the file's first head_bytes and of the rest
    signature        a signed manifest (left out otherwise): {"algorithm": "ed25519", "signer":
                       "virtrbd-signer1…", "value": 128 hex digits} over every other field but the seal
                       (canonical JSON, after a context line; ``sealing.signing``)
    seal             CRC-32C of all the other fields (canonical JSON): a damaged manifest is refused

A version 2 manifest must carry its seal and be byte for byte what virtrbd
writes (``to_json``): then a changed byte anywhere in it, even in its layout,
is refused.  Version 1 manifests may lack the seal (the oldest predate it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ... import crc32c
from ...errors import CorruptBackupError, UsageError
from ...spec import ImageSpec
from ..file_crc import ALGORITHM as FILE_ALGORITHM
from ..files import AtomicFile, open_regular_stream
from .checksum import FILE_HEX_DIGITS, HEX_DIGITS
from .manifest_parts import check_domain, check_encryption, check_signature, is_lower_hex

SUFFIX = ".manifest.json"
FORMATS = ("raw", "qcow2")
DIFF_FORMAT = "rbd-diff-v1"
EXTENSIONS = {"raw": ".raw", "qcow2": ".qcow2", DIFF_FORMAT: ".rbddiff"}
MAX_MANIFEST_BYTES = 1 << 20
VERSION = 2
VERSIONS = (1, 2)


def backup_name(spec: ImageSpec, fmt: str, since: str | None = None) -> str:
    snap = f"{since}~{spec.snapshot}" if since else spec.snapshot
    return f"{spec.pool}~{spec.image}~{snap}{EXTENSIONS[fmt]}"


def manifest_path(data_path: Path) -> Path:
    return data_path.with_name(data_path.name + SUFFIX)


@dataclass
class Manifest:
    kind: str
    format: str
    file: str
    file_size: int
    image: str
    image_id: str
    snapshot: str
    snapshot_id: int
    size: int
    object_size: int
    checksum: dict
    created: str
    tool: str
    from_snapshot: str | None = None
    parent: dict | None = None
    cluster_size: int | None = None
    stats: dict = field(default_factory=dict)
    file_checksum: dict | None = None   # the file's bytes as written; None only in version 1
    snapshot_time: str | None = None    # when the snapshot was taken (UTC); None where it was not recorded
    made_from: list | None = None       # a synthetic full: the backup files it was made of, full first
    domain: dict | None = None          # one of a domain's set of backups at one instant (left out otherwise)
    encryption: dict | None = None      # an encrypted backup (left out otherwise)
    signature: dict | None = None       # the writer's Ed25519 signature (left out when unsigned)
    manifest_version: int = VERSION
    seal: str | None = None     # CRC-32C of the other fields: a damaged manifest is not believed

    # where it was loaded from, and the identities that open it if it is encrypted (not stored)
    path: Path | None = field(default=None, repr=False, compare=False)
    identities: list | None = field(default=None, repr=False, compare=False)

    @property
    def data_path(self) -> Path:
        assert self.path is not None
        return self.path.parent / self.file

    @property
    def spec(self) -> ImageSpec:
        return ImageSpec.parse(self.image).at(self.snapshot)

    @property
    def incremental(self) -> bool:
        return self.kind == "incremental"

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        data.pop("identities")
        for late in ("domain", "encryption", "signature"):   # manifests written before these fields stay byte for byte
            if data[late] is None:
                data.pop(late)
        return dumps(data)

    def signed_bytes(self) -> bytes:
        """What a signature covers: every field as written but the seal and the signature, canonical."""
        data = json.loads(self.to_json())
        data.pop("seal")
        data.pop("signature", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def sign(self, key) -> None:
        """Sign the manifest with ``key`` (a ``sealing.signing.SigningKey``), its last step before ``save``."""
        self.signature = None
        self.signature = {"algorithm": "ed25519", "signer": str(key.signer),
                          "value": key.sign(self.signed_bytes()).hex()}

    def save(self, data_path: Path) -> Path:
        """Publish the manifest beside ``data_path`` (temp name, fsync, link)."""
        final = manifest_path(data_path)
        with AtomicFile(final) as out:
            payload = self.to_json().encode()
            os.write(out.fd, payload)
            out.commit()
        self.path = final
        return final


_FIELDS = {
    "manifest_version": int, "kind": str, "format": str, "file": str, "file_size": int, "image": str,
    "image_id": str, "snapshot": str, "snapshot_id": int, "size": int, "object_size": int, "checksum": dict,
    "created": str, "tool": str,
}
_OPTIONAL = {"from_snapshot": str, "parent": dict, "cluster_size": int, "stats": dict, "seal": str,
             "file_checksum": dict, "snapshot_time": str, "made_from": list, "domain": dict,
             "encryption": dict, "signature": dict}


def load(path: os.PathLike | str) -> Manifest:
    """Read and check a manifest; every problem is one line naming the file."""
    path = Path(path)
    try:
        with open_regular_stream(path, "manifest", buffering=64 << 10) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise CorruptBackupError(f"{path}: manifest not found (a backup without its manifest is "
                                 f"incomplete)") from None
    except OSError as exc:
        raise CorruptBackupError(f"{path}: cannot read the manifest ({(exc.strerror or str(exc)).lower()})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CorruptBackupError(f"{path}: not a virtrbd manifest (larger than 1 MiB)")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptBackupError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptBackupError(f"{path}: not a virtrbd manifest")

    def bad(what: str):
        raise CorruptBackupError(f"{path}: {what}")

    for name, kind in _FIELDS.items():
        if name not in data:
            bad(f"missing field {name!r}")
        if not isinstance(data[name], kind) or (kind is int and isinstance(data[name], bool)):
            bad(f"field {name!r} should be a {kind.__name__}")
    for name, kind in _OPTIONAL.items():
        if data.get(name) is not None and not isinstance(data[name], kind):
            bad(f"field {name!r} should be a {kind.__name__}")
    unknown = set(data) - set(_FIELDS) - set(_OPTIONAL)
    if unknown:
        bad(f"unknown fields {sorted(unknown)}")
    if data["manifest_version"] not in VERSIONS:
        bad(f"manifest version {data['manifest_version']} is not supported ({', '.join(map(str, VERSIONS))})")
    manifest = Manifest(**data)
    manifest.path = path
    _check(manifest, bad)
    if manifest.manifest_version >= 2:
        if manifest.seal is None:
            bad("the manifest has no seal (every version 2 manifest is sealed)")
        if manifest.file_checksum is None:
            bad("missing field 'file_checksum'")
    if manifest.seal is not None and manifest.seal != seal_of(data):
        bad("the manifest is damaged: its fields do not match its seal (CRC-32C)")
    if manifest.manifest_version >= 2 and raw != manifest.to_json().encode():
        bad("the manifest was changed: its bytes are not the ones virtrbd wrote")
    return manifest


def dumps(data: dict) -> str:
    """A manifest's fields as virtrbd writes them: sealed afresh, keys sorted, two-space indents."""
    return json.dumps({**data, "seal": seal_of(data)}, indent=2, sort_keys=True) + "\n"


def seal_of(data: dict) -> str:
    """CRC-32C of every field but the seal, in a canonical form.

    A restore checks the data against the manifest's CRC-32C, not its SHA-256
    (see checksum.DataCRC); the seal makes sure the manifest it believes is the
    one written, so a damaged checksum field cannot pass unnoticed.
    """
    body = {key: value for key, value in data.items() if key != "seal"}
    return f"{crc32c.value(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()):08x}"


def parse_time(text: str) -> datetime | None:
    """A manifest's time as an aware datetime (UTC when it names no zone); None when it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _check(m: Manifest, bad) -> None:
    if m.kind not in ("full", "incremental"):
        bad(f"unknown kind {m.kind!r}")
    if "/" in m.file or m.file in ("", ".", "..") or m.file.startswith("."):
        bad(f"file name {m.file!r} must be a plain name in the same directory")
    if m.path is not None and m.path.name != m.file + SUFFIX:
        bad(f"describes {m.file!r}, not {m.path.name[:-len(SUFFIX)]!r}")
    try:
        ImageSpec.parse(m.image).at(m.snapshot)
        if m.from_snapshot is not None:
            ImageSpec.parse(m.image).at(m.from_snapshot)
    except UsageError as exc:
        bad(f"{exc}")
    if "/" not in m.image:
        bad(f"image {m.image!r} should be POOL/IMAGE")
    if m.size < 0 or m.file_size < 0:
        bad("negative size")
    algorithm = m.checksum.get("algorithm")
    known = HEX_DIGITS if m.kind == "full" else FILE_HEX_DIGITS
    digits = known.get(algorithm, 0) if isinstance(algorithm, str) else 0
    if not digits:
        bad(f"checksum algorithm {algorithm!r} is not one of {', '.join(sorted(known))}")
    if not is_lower_hex(m.checksum.get("value"), digits):
        bad(f"checksum value should be {digits} lowercase hex digits")
    crc = m.checksum.get("data_crc32c")
    if crc is not None and not is_lower_hex(crc, 8):
        bad("checksum data_crc32c should be 8 lowercase hex digits")
    if m.file_checksum is not None and (m.file_checksum.get("algorithm") != FILE_ALGORITHM
                                        or not is_lower_hex(m.file_checksum.get("value"), 8)
                                        or set(m.file_checksum) != {"algorithm", "value"}):
        bad(f"file_checksum should be {{'algorithm': {FILE_ALGORITHM!r}, 'value': 8 lowercase hex digits}}")
    for name in ("created", "snapshot_time"):
        if getattr(m, name) is not None and parse_time(getattr(m, name)) is None:
            bad(f"{name} {getattr(m, name)!r} is not an ISO 8601 time")
    if m.made_from is not None and not (m.made_from and all(isinstance(f, str) for f in m.made_from)):
        bad("made_from should be a list of backup file names")
    if m.domain is not None:
        check_domain(m, bad)
    if m.encryption is not None:
        check_encryption(m, bad)
    if m.signature is not None:
        check_signature(m, bad)
    if m.format != "qcow2" and m.cluster_size is not None:
        bad(f"cluster_size belongs to QCOW2 backups, not to {m.format!r}")
    if m.cluster_size is not None and (m.cluster_size < 512 or m.cluster_size & (m.cluster_size - 1)):
        bad(f"cluster_size {m.cluster_size} is not a power of two of at least 512")
    if m.kind == "full":
        if m.format not in FORMATS:
            bad(f"format {m.format!r} is not a full-backup format ({', '.join(FORMATS)})")
        if m.from_snapshot is not None or m.parent is not None:
            bad("a full backup has no from_snapshot or parent")
        if m.format == "raw" and m.encryption is not None:
            bad("a RAW backup is never encrypted (its holes would be ciphertext)")
        if m.format == "raw" and m.file_size != m.size:
            bad(f"a RAW backup of a {m.size}-byte image should be {m.size} bytes, not {m.file_size}")
        if m.format == "qcow2" and not isinstance(m.cluster_size, int):
            bad("a QCOW2 backup needs cluster_size")
    else:
        if m.format != DIFF_FORMAT:
            bad(f"an incremental backup's format is {DIFF_FORMAT!r}, not {m.format!r}")
        if not m.from_snapshot:
            bad("an incremental backup needs from_snapshot")
        parent = m.parent or {}
        if not isinstance(parent.get("file"), str) or not isinstance(parent.get("checksum"), str):
            bad("an incremental backup needs parent.file and parent.checksum")


def resolve(src: os.PathLike | str) -> Manifest:
    """The manifest of ``src``: a backup file or its manifest."""
    path = Path(src)
    if path.name.endswith(SUFFIX):
        return load(path)
    if path.is_dir():
        raise UsageError(f"{path}: a directory; name a backup file (or its manifest)")
    if not path.exists() and not manifest_path(path).exists():
        raise UsageError(f"{path}: no such backup file")
    return load(manifest_path(path))


def chain(newest: Manifest, read=None) -> list[Manifest]:
    """The full backup first, then each incremental up to ``newest``; links checked, nothing else read.

    ``read`` loads a parent's manifest (default ``load``): a listing passes one that remembers.
    """
    read = read or load
    links = [newest]
    seen = {newest.path}
    while links[-1].incremental:
        child = links[-1]
        link = child.parent or {}       # an incremental always names its parent (load checks it)
        assert child.path is not None, "a manifest read from a file knows its path"
        parent_path = manifest_path(child.path.parent / link["file"])
        if parent_path in seen or len(links) > 10000:
            raise CorruptBackupError(f"{child.path}: the chain of parents loops")
        seen.add(parent_path)
        if not parent_path.exists():
            raise CorruptBackupError(f"{child.path}: its parent backup {link['file']} is missing "
                                     f"(no {parent_path.name})")
        parent = read(parent_path)
        where = f"{child.file}: a diff"
        if parent.image_id != child.image_id or parent.image != child.image:
            raise CorruptBackupError(f"{where} of {child.image} (id {child.image_id}) cannot apply to "
                                     f"{parent.file}, a backup of {parent.image} (id {parent.image_id})")
        if parent.snapshot != child.from_snapshot:
            raise CorruptBackupError(f"{where} from @{child.from_snapshot} cannot apply to {parent.file}, "
                                     f"which holds @{parent.snapshot}")
        if parent.checksum["value"] != link["checksum"]:
            raise CorruptBackupError(f"{where} was made on top of another {parent.file} (checksum differs)")
        links.append(parent)
    links.reverse()
    return links


def find_backups(directory: Path, image_id: str, snapshot: str) -> list[Manifest]:
    """Committed backups in ``directory`` of that image's snapshot, newest first (unreadable ones skipped)."""
    found = []
    for entry in sorted(directory.glob(f"*{SUFFIX}")):
        if entry.name.startswith("."):
            continue
        try:
            m = load(entry)
        except CorruptBackupError:
            continue
        if m.image_id == image_id and m.snapshot == snapshot and m.data_path.exists():
            found.append(m)
    found.sort(key=lambda m: m.created, reverse=True)
    return found
