"""What a backup, a restore or a verification was asked to do (plans) and what it did (results).

Plans are checked requests that need no cluster; results are what the API
returns and the CLI prints (``--json`` gives their fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..spec import ImageSpec
from .formats.manifest import Manifest
from .stream import MiB


@dataclass
class BackupResult:
    path: Path
    manifest: Path
    kind: str                   # "full" | "incremental"
    format: str                 # "raw" | "qcow2" | "rbd-diff-v1"
    image: str                  # POOL/IMAGE@SNAP
    size: int                   # the image's size in bytes
    data_bytes: int             # bytes of the allocated (or changed) extents the backup holds
    file_size: int
    checksum: str
    seconds: float
    from_snapshot: str | None = None
    parent: str | None = None
    read_bytes: int = 0         # bytes read from the source (extents closer than a gap are read as one)

    @property
    def rate(self) -> float:
        """Image bytes covered per second."""
        return self.size / self.seconds if self.seconds else 0.0


@dataclass
class RestoreResult:
    image: str                  # POOL/IMAGE
    chain: list[str]            # backup files applied, full backup first
    snapshot: str               # the snapshot whose content the image now holds
    size: int
    written_bytes: int
    seconds: float
    replaced: bool = False
    created_snapshot: str | None = None
    path: str = "librbd"        # how the data went in: "libvirt" (volume upload) or "librbd"


@dataclass
class VerifyResult:
    file: Path
    kind: str
    format: str
    image: str
    checksum: str
    checked_bytes: int
    seconds: float
    against: str | None = None
    #: what was judged: "file and content", or "content" for a backup whose manifest predates the file checksum
    judged: str = "file and content"
    #: what the manifest's signature established (``trust.Trust.authenticate``)
    signature: str = "unsigned"


@dataclass(frozen=True)
class BackupPlan:
    """A checked backup request: nothing here needs the cluster."""

    spec: ImageSpec             # POOL/IMAGE@SNAP
    dest: Path
    format: str                 # "raw" | "qcow2" | "rbd-diff-v1"
    since: ImageSpec | None = None
    cluster_size: int = 64 << 10
    domain: dict | None = None  # one of a domain's set at one instant: the manifest's ``domain`` field
    recipients: tuple = ()      # age recipients (``sealing.keys.Recipient``) the file is encrypted to
    signing_key: object = None  # the ``sealing.signing.SigningKey`` that signs the manifest (None: unsigned)


@dataclass
class RestorePlan:
    """A checked chain of backups: manifests linked, files present, sizes and structure valid."""

    links: list[Manifest] = field(default_factory=list)

    @property
    def newest(self) -> Manifest:
        return self.links[-1]

    @property
    def total_bytes(self) -> int:
        return self.links[0].size + sum(m.file_size for m in self.links[1:])

    @property
    def data_bytes(self) -> int | None:
        """The bytes of data the chain writes, at most (its manifests' stats); None when one does not say."""
        sizes = [m.stats.get("data_bytes") for m in self.links]
        counted = [n for n in sizes if isinstance(n, int)]
        return sum(counted) if len(counted) == len(sizes) else None


@dataclass
class SourceFacts:
    """What a manifest records about the image a backup comes from."""

    size: int
    image_id: str
    snapshot_id: int
    object_size: int = 4 * MiB
    snapshots: dict[str, int] = field(default_factory=dict)
    snapshot_time: str | None = None          # when the snapshot was taken, UTC ISO 8601
