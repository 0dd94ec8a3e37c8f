"""librbd's live import faked over a FakeCluster, for the instant-restore job's unit tests."""

from __future__ import annotations

from pathlib import Path

from virtrbd.ceph.live_import import Claimed, MigrationStatus
from virtrbd.errors import BusyError

from ..fakes import FakeCluster

OBJECT = 4 << 20


class FakeLiveImport:
    """The live-import door over a FakeCluster: prepare makes the image, execute copies the file into it."""

    calls: list[tuple] = []
    busy = False
    claimed: set[int] = set()
    object_size = OBJECT

    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster

    def prepare(self, pool, name, source):
        path = Path(source["stream"]["file_path"])
        image = self.cluster.add(pool, name, size=path.stat().st_size if source["type"] == "raw" else 0)
        image.migrating = source
        self.calls.append(("prepare", name, source["type"]))

    def status(self, pool, name):
        image = self.cluster.pools[pool][name]
        state = getattr(image, "migrating", None)
        return MigrationStatus("prepared", "") if state else None

    def execute(self, pool, name, on_progress=None):
        """librbd's copy: every object the image does not have yet (claimed ones it has)."""
        image = self.cluster.pools[pool][name]
        if image.migrating["type"] == "raw":
            data, step = Path(image.migrating["stream"]["file_path"]).read_bytes(), self.object_size
            for start in range(0, len(data), step):
                if start // step not in self.claimed:
                    image.data[start:start + step] = data[start:start + step]
        if on_progress:
            on_progress(1, 1)
        self.calls.append(("execute", name))

    def commit(self, pool, name):
        self.cluster.pools[pool][name].migrating = None
        self.calls.append(("commit", name))

    def abort(self, pool, name):
        if self.busy:
            raise BusyError(f"aborting the import into {pool}/{name}: is in use")
        del self.cluster.pools[pool][name]
        self.calls.append(("abort", name))

    def address(self):
        return "127.0.0.1:0/1"

    def evict(self, pool, name, addresses):
        if addresses - {self.address()}:
            self.calls.append(("evict", name, sorted(addresses)))
        return 0

    def claim_objects(self, pool, name, objects):
        """Each object written with its pieces only: a wrong offset or a missed piece shows in the content."""
        image = self.cluster.pools[pool][name]
        written = empty = 0
        for number, pieces in objects:
            self.claimed.add(number)
            at = number * self.object_size
            for offset, data in pieces:
                image.data[at + offset:at + offset + len(data)] = data
            written, empty = written + bool(pieces), empty + (not pieces)
        self.calls.append(("claim", name, written, empty))
        return Claimed(written, empty)

    def sparsify(self, pool, name, granularity):
        self.calls.append(("sparsify", name))
