"""The guided tour behind ``make demo``: every step runs through the product and is checked.

Each step is timed and verified before it reports OK (an image that should
exist is opened, a size that should have changed is read back); the figures in
the report come from this run only.  Later capabilities add their steps here.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import VirtrbdError
from .lab import Lab
from .units import format_size


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    ok: bool = False
    detail: str = ""


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    def table(self) -> str:
        width = max(len(s.name) for s in self.steps)
        lines = [f"{'step':<{width}}  {'time':>8}  result", f"{'-' * width}  {'-' * 8}  {'-' * 30}"]
        for s in self.steps:
            lines.append(f"{s.name:<{width}}  {s.seconds:>7.2f}s  {'OK' if s.ok else 'FAILED'}  {s.detail}")
        total = sum(s.seconds for s in self.steps)
        lines.append(f"{'total':<{width}}  {total:>7.2f}s  {'all steps OK' if self.ok else 'some steps FAILED'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "steps": [asdict(s) for s in self.steps]}, indent=2)


class Tour:
    def __init__(self, lab: Lab, progress: Callable[[str], None]):
        self.lab = lab
        self.report = Report()
        self.progress = progress

    def step(self, name: str, action: Callable[[], str]) -> bool:
        self.progress(f"… {name}")
        step = Step(name)
        started = time.monotonic()
        try:
            step.detail = action()
            step.ok = True
        except VirtrbdError as exc:
            step.detail = str(exc)
        step.seconds = time.monotonic() - started
        self.report.steps.append(step)
        return step.ok

    def run(self) -> Report:
        from .storage import Storage

        if not self.step("lab up (Ceph + libvirtd)", self._lab_up):
            return self.report
        storage = Storage(self.lab.conf_file)
        image = f"demo-{uuid.uuid4().hex[:6]}"
        with storage:
            self.step("connect as the restricted client", lambda: self._check(storage))
            self.step("create and grow an image", lambda: self._create(storage, image))
            self.step("libvirt sees the image", lambda: self._libvirt_sees(storage, image))
            self.step("remove the image", lambda: self._remove(storage, image))
        return self.report

    def _lab_up(self) -> str:
        changed = self.lab.up(with_libvirt=True)
        state = self.lab.status()
        return (f"{'started' if changed else 'reused'}: monitor {state['monitor']}, "
                f"libvirt pool {state['libvirt']['pool']}, domains {state['libvirt']['domain_type']}")

    @staticmethod
    def _check(storage) -> str:
        info = storage.check()
        return f"{info.user} on cluster {info.fsid[:8]}…, pool {info.pool}"

    @staticmethod
    def _create(storage, image: str) -> str:
        storage.create_image(image, 256 << 20)
        storage.resize_image(image, 1 << 30)
        size = storage.image_size(image)
        if size != 1 << 30:
            raise VirtrbdError(f"size read back is {size}, expected {1 << 30}")
        return f"rbd/{image}: {format_size(256 << 20)} → {format_size(size)}"

    def _libvirt_sees(self, storage, image: str) -> str:
        from .libvirt_host import Host
        with Host(storage.config.libvirt.uri) as host:
            pool = host.find_pool(storage.config.libvirt_pool)
            started = time.monotonic()
            pool.refresh(0)
            refreshed = time.monotonic() - started
            volume = pool.storageVolLookupByName(image)
            capacity = volume.info()[1]
        if capacity != 1 << 30:
            raise VirtrbdError(f"libvirt reports {capacity} bytes")
        return f"pool {storage.config.libvirt_pool}: volume {volume.path()} {format_size(capacity)} " \
               f"(pool refresh {refreshed * 1000:.0f} ms)"

    @staticmethod
    def _remove(storage, image: str) -> str:
        storage.remove_image(image)
        if storage.image_exists(image):
            raise VirtrbdError(f"rbd/{image} still exists")
        return f"rbd/{image} gone"


def run(lab: Lab, *, keep: bool, report_path: Path | None, progress: Callable[[str], None]) -> Report:
    tour = Tour(lab, progress)
    try:
        report = tour.run()
    finally:
        if not keep:
            started = time.monotonic()
            lab.down()
            tour.report.steps.append(Step("lab down", time.monotonic() - started, True, "nothing left running"))
    if report_path is not None:
        report_path.write_text(report.table() + "\n")
    return report
