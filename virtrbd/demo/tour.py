"""The guided tour behind ``make demo``.

The storage work goes through the product as a user drives it: the
``virtrbd`` command for snapshots, backups, restore and verification (their
``--json`` output feeds the report), the qemu hook — installed here — for every
clone, and the lab's real Linux guests (``virtrbd.lab.guest``) booted from those
clones, writing records that a backup must hold.  Each step checks what
it claims before it reports OK: an image that should exist is opened, a clone
that should be gone is looked for, a restored image is compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import VirtrbdError
from ..lab import Lab
from ..units import format_size
from . import encrypted_step, migration_step
from .report import Report, Step
from .settings import DemoSettings

MiB = 1 << 20
GiB = 1 << 30
PREFIX = "demo"


class DemoFailure(VirtrbdError):
    """A step found the system not in the state it should be in."""


class Tour:
    def __init__(self, lab: Lab, settings: DemoSettings, progress: Callable[[str], None]):
        self.lab = lab
        self.settings = settings
        self.progress = progress
        self.report = Report()
        # beside the lab, as an NFS mount would be: QEMU's user may pass it (0711) to read an instant restore
        self.backups = lab.root.parent / f"{lab.root.name}-secondary-storage"
        self.started_lab = False
        self.previous_hook: str | None = None     # an installation of the hook found before the demo
        self.installed_hook = False

    # --- the frame ---------------------------------------------------------------------

    def step(self, name: str, action: Callable[[Step], str]) -> None:
        """Run one step; a failure ends the tour (later steps depend on it) after it is reported."""
        self.progress(f"… {name}")
        step = Step(name)
        started = time.monotonic()
        try:
            step.detail = action(step)
            step.ok = True
        except (VirtrbdError, OSError) as exc:
            step.detail = " ".join(str(exc).split())
        except Exception as exc:  # libvirt's own errors: report them like any other failure
            if type(exc).__module__ != "libvirt":
                raise
            step.detail = " ".join(str(exc).split())
        finally:
            step.seconds = time.monotonic() - started
            self.report.steps.append(step)
        if not step.ok:
            raise _Stop()

    def cli(self, *args: str, config: Path | None = None) -> dict:
        """Run the product's own command (``--json``) against the lab (with the lab's config, or ``config``);
        its JSON summary, or a DemoFailure."""
        command = [sys.executable, "-m", "virtrbd", "--config", str(config or self.lab.conf_file), *args, "--json"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise DemoFailure(f"virtrbd {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
        return json.loads(done.stdout)

    def run(self) -> Report:
        import libvirt

        from ..storage import Storage
        try:
            self.step("lab up: Ceph + two libvirtds (hosts a and b) on 127.0.0.1", self.lab_up)
            with Storage(self.lab.conf_file) as storage:
                self.storage = storage
                self.conn = libvirt.open(storage.config.libvirt.uri)
                try:
                    self._tour()
                finally:
                    if not self.settings.keep:
                        self.step("clean up domains, images and backups", self.clean_up)
                    self.conn.close()
        except _Stop:
            pass
        finally:
            if not self.settings.keep:
                self._finish()
        return self.report

    def _tour(self) -> None:
        s = self.settings
        self.step("install the qemu hook (virtrbd hook install)", self.install_hook)
        self.step("golden image: an ext4 filesystem, protected snapshot", self.golden)
        self.step(f"define {s.domains} Linux guests with clone-on-boot disks", self.define_domains)
        self.step(f"start {s.batch} guests: the hook clones at boot, the agents answer", self.start_batch)
        self.step("each guest writes checksummed records to its own disk", self.write_records)
        self.step("stop them cleanly: ephemeral clones go, persistent stay", self.stop_batch)
        self.step("a backup of a persistent clone: a clean filesystem with the records", self.first_backup)
        self.step("the guest writes more records: a second snapshot", self.second_snapshot)
        self.step("backup QCOW2 (written by virtrbd)", lambda step: self.backup(step, "qcow2"))
        self.step("backup incremental (rbd diff)", lambda step: self.backup(step, "diff"))
        self.step("restore full + incremental, compare", self.restore)
        self.step("verify QCOW2 against the live snapshot", self.verify)
        self.step("encrypted backup: this host cannot read it, the operator's identity restores it",
                  lambda step: encrypted_step.backup_and_restore(self, step, PREFIX))
        self.step("instant restore: a guest boots on it at once, the copy runs under it", self.instant_restore)
        self.step("live migration: a guest writing records moves to host b and back",
                  lambda step: migration_step.there_and_back(self, step, PREFIX))

    def _finish(self) -> None:
        if self.installed_hook:
            from ..hook_install import notify_libvirtd, script_path, uninstall
            if self.previous_hook is None:
                uninstall()
            else:                              # put back what was installed before, as it was
                script_path().write_text(self.previous_hook)
                notify_libvirtd()
        if self.started_lab:
            started = time.monotonic()
            stopped = self.lab.down()
            self.report.steps.append(Step("lab down", time.monotonic() - started, True,
                                          f"{len(stopped)} processes stopped, nothing left running"))

    # --- the steps ---------------------------------------------------------------------

    def lab_up(self, step: Step) -> str:
        self.started_lab = self.lab.up(with_libvirt=True, hosts=2)
        status = self.lab.status()
        self.guests = self.lab.guests()
        kit = self.guests.kit.build()
        accelerator = "KVM" if self.guests.accelerator(kit) == "kvm" else "TCG"
        step.figures = {"kit_seconds": round(kit.seconds, 2)}
        return (f"{'started' if self.started_lab else 'reused'}: monitor {status['monitor']}, libvirt pool "
                f"{status['libvirt']['pool']} on hosts {' and '.join(h['name'] for h in status['hosts'])}; "
                f"guest kit {'built' if kit.built else 'current'} "
                f"({kit.release}), guests run under {accelerator}")

    def install_hook(self, step: Step) -> str:
        from ..hook_install import install, script_path, status
        if script_path().exists():
            self.previous_hook = script_path().read_text()
        path = install(self.lab.conf_file)
        self.installed_hook = True
        if not status().installed:
            raise DemoFailure(f"{path} is not installed")
        return f"{path}; libvirtd told to reload its hooks"

    def golden(self, step: Step) -> str:
        from ..lab.guest.golden import DEFAULT_FILES, create_golden_filesystem
        from ..spec import ImageSpec
        spec = ImageSpec(self.storage.config.ceph.pool, f"{PREFIX}-golden")
        self.golden_spec = create_golden_filesystem(self.storage, spec, self.settings.golden_size)
        snap = self.storage.list_snapshots(spec)[0]
        if not snap.protected:
            raise DemoFailure(f"{self.golden_spec} is not protected")
        return (f"{self.golden_spec}: {format_size(self.settings.golden_size)}, ext4 with {len(DEFAULT_FILES)} "
                f"known files and their CHECKSUMS, protected")

    def define_domains(self, step: Step) -> str:
        from ..lab.guest.domain import GuestSpec
        from ..spec import ImageSpec
        pool = self.storage.config.ceph.pool
        self.names = [f"{PREFIX}-vm{i:03d}" for i in range(self.settings.domains)]
        for i, name in enumerate(self.names):
            self.guests.define(GuestSpec(name, (ImageSpec(pool, f"{name}-disk"),), clone_of=self.golden_spec,
                                         ephemeral=self._ephemeral(i), memory_mib=self.settings.guest_memory_mib))
        defined = {d.name() for d in self.conn.listAllDomains()} & set(self.names)
        if len(defined) != len(self.names):
            raise DemoFailure(f"{len(defined)} of {len(self.names)} domains defined")
        made = [n for n in self.names if self.storage.image_exists(f"{n}-disk")]
        if made:
            raise DemoFailure(f"{len(made)} disks exist before any start: {', '.join(made[:3])}")
        return (f"{len(defined)} guests booting the kit ({len(defined) - len(defined) // 2} ephemeral, "
                f"{len(defined) // 2} persistent); no disk exists yet: copy-on-write clones come at boot")

    def start_batch(self, step: Step) -> str:
        self.batch = self.names[:self.settings.batch]
        started = time.monotonic()
        with ThreadPoolExecutor(self.settings.parallel) as pool:
            list(pool.map(self.guests.start, self.batch))
        elapsed = time.monotonic() - started
        from ..hook import OWNER_KEY
        for name in self.batch:
            dom = self.conn.lookupByName(name)
            with self.storage.cluster.image(self.storage.config.ceph.pool, f"{name}-disk", read_only=True) as img:
                owner = json.loads(img.metadata_get(OWNER_KEY))
                if owner["domain"] != dom.UUIDString() or not img.parent_info():
                    raise DemoFailure(f"{name}-disk is not the hook's clone for {name}")
        checked = self.guests.run(self.batch[0], ["sh", "-c", "cd /mnt/vda && sha256sum -c CHECKSUMS"])
        if checked.exit_code != 0:
            raise DemoFailure(f"{self.batch[0]}: the golden files do not check: {checked.stdout!r}")
        step.figures = {"guests": len(self.batch), "seconds": round(elapsed, 3)}
        return (f"{len(self.batch)} Linux guests up in {elapsed:.1f} s ({self.settings.parallel} starting at "
                f"once), each on the hook's clone; the golden files check inside {self.batch[0]}")

    def write_records(self, step: Step) -> str:
        for name in self.batch:
            self._in_guest(name, "records", "start", "vda")
        time.sleep(2)
        self.durable = {}
        for name in self.batch:
            self._in_guest(name, "records", "stop")
            self.durable[name] = int(self._in_guest(name, "records", "durable"))
        if min(self.durable.values()) < 1:
            raise DemoFailure(f"a guest wrote no record: {self.durable}")
        step.figures = {"records": sum(self.durable.values())}
        return (f"{sum(self.durable.values())} records written and synced by {len(self.batch)} guests at once "
                f"({min(self.durable.values())} to {max(self.durable.values())} each)")

    def stop_batch(self, step: Step) -> str:
        with ThreadPoolExecutor(self.settings.parallel) as pool:
            list(pool.map(self.guests.stop, self.batch))
        kept: list[str] = []
        gone: list[str] = []
        for i, name in enumerate(self.batch):
            exists = self.storage.image_exists(f"{name}-disk")
            if exists == self._ephemeral(i):
                raise DemoFailure(f"{name}-disk {'still exists' if exists else 'is gone'}")
            (kept if exists else gone).append(name)
        self.persistent_guest = kept[0]
        self.persistent = f"{kept[0]}-disk"
        return f"{len(gone)} ephemeral clones removed by the hook, {len(kept)} persistent clones kept"

    def first_backup(self, step: Step) -> str:
        from ..lab.guest.judge import filesystem_is_clean, last_record
        pool = self.storage.config.ceph.pool
        self.snap1 = str(self.storage.create_snapshot(f"{pool}/{self.persistent}@{PREFIX}-1"))
        detail = self.backup(step, "raw")
        clean, said = filesystem_is_clean(Path(self.raw))
        if not clean:
            raise DemoFailure(f"{self.raw}: e2fsck -fn finds the filesystem not clean: {said}")
        found, wrote = last_record(Path(self.raw)), self.durable[self.persistent_guest]
        if found != wrote:
            raise DemoFailure(f"{self.raw}: the last valid record is {found}, the guest wrote {wrote}")
        return f"{detail}; e2fsck -fn: clean; debugfs finds records 1 to {found}, as the guest wrote them"

    def second_snapshot(self, step: Step) -> str:
        name = self.persistent_guest
        self.guests.start(name)
        self._in_guest(name, "records", "start", "vda")
        time.sleep(1)
        self._in_guest(name, "records", "stop")
        durable = int(self._in_guest(name, "records", "durable"))
        self.guests.stop(name)
        pool = self.storage.config.ceph.pool
        self.snap2 = str(self.storage.create_snapshot(f"{pool}/{self.persistent}@{PREFIX}-2"))
        names = [s.name for s in self.storage.list_snapshots(self.persistent)]
        if names != [f"{PREFIX}-1", f"{PREFIX}-2"]:
            raise DemoFailure(f"{self.persistent} has snapshots {names}")
        return f"{name} booted again from its clone and wrote {durable} more records; then {self.snap2}"

    def backup(self, step: Step, kind: str) -> str:
        self.backups.mkdir(parents=True, exist_ok=True, mode=0o711)
        if kind == "diff":
            result = self.cli("backup", self.snap2, str(self.backups), "--since", self.snap1)
            self.incremental = result["path"]
        else:
            result = self.cli("backup", self.snap1, str(self.backups), "--format", kind)
            if kind == "qcow2":
                self.qcow2 = result["path"]
            else:
                self.raw = result["path"]
        size, file_size, seconds = result["size"], result["file_size"], result["seconds"]
        data = result["data_bytes"]
        on_disk = os.stat(result["path"]).st_blocks * 512       # what the sparse file really takes
        step.figures = {"seconds": seconds, "data_bytes": data, "file_size": file_size, "on_disk": on_disk,
                        "image_size": size, "MB_per_s": round(data / seconds / 1e6, 1) if seconds else 0}
        return (f"{Path(result['path']).name}: {format_size(on_disk)} on disk for a {format_size(size)} image "
                f"({format_size(data)} read) at {data / seconds / 1e6:.0f} MB/s")

    def restore(self, step: Step) -> str:
        target = f"{self.storage.config.ceph.pool}/{PREFIX}-restored"
        result = self.cli("restore", self.incremental, target)
        restored, original = self._digest(target), self._digest(self.snap2)
        if restored != original:
            raise DemoFailure(f"{target} differs from {self.snap2}")
        step.figures = {"seconds": result["seconds"], "sha256": restored}
        return (f"{target} from {len(result['chain'])} files: SHA-256 {restored[:16]}… equals {self.snap2}")

    def verify(self, step: Step) -> str:
        result = self.cli("verify", self.qcow2, "--against", self.snap1)
        step.figures = {"seconds": result["seconds"], "checked_bytes": result["checked_bytes"]}
        return (f"{Path(self.qcow2).name}: checksum matches its manifest and {self.snap1} "
                f"({format_size(result['checked_bytes'])} compared)")

    def instant_restore(self, step: Step) -> str:
        from ..lab.guest.domain import GuestSpec
        from ..spec import ImageSpec
        pool = self.storage.config.ceph.pool
        name = f"{PREFIX}-instant"
        target = ImageSpec(pool, f"{name}-disk")
        started = time.monotonic()
        self.cli("restore", "--instant", self.qcow2, str(target), "--no-copy")
        usable = time.monotonic() - started
        self.names = [*getattr(self, "names", []), name]
        self.guests.create(GuestSpec(name, (target,), memory_mib=self.settings.guest_memory_mib))
        booted = time.monotonic() - started
        checked = self.guests.run(name, ["sh", "-c", "cd /mnt/vda && sha256sum -c CHECKSUMS"])
        if checked.exit_code != 0:
            raise DemoFailure(f"{name}: the golden files do not check on the instant restore: {checked.stdout!r}")
        found, wrote = self._in_guest(name, "records", "last", "vda").split(), self.durable[self.persistent_guest]
        if found != ["vda", str(wrote)]:
            raise DemoFailure(f"{name}: the last valid record is {found}, the backup holds {wrote}")
        self._in_guest(name, "records", "start", "vda")
        copied = self.cli("restore", "--resume", str(target))          # the copy, under the running guest
        self._in_guest(name, "records", "stop")
        more = int(self._in_guest(name, "records", "durable"))
        self.guests.stop(name)
        if self.storage.instant_restore_status(target).state != "none":
            raise DemoFailure(f"{target}: the instant restore is not committed")
        step.figures = {"usable_seconds": round(usable, 3), "agent_seconds": round(booted, 3),
                        "copy_seconds": copied["seconds"]}
        return (f"{target} usable {usable:.2f} s after the command; a guest's agent answered on it after "
                f"{booted:.1f} s, its files and records 1 to {wrote} valid; the copy ran under it in "
                f"{copied['seconds']:.2f} s and was committed while the guest wrote {more} more records")

    def clean_up(self, step: Step) -> str:
        from ..errors import LabError
        for name in getattr(self, "names", []):
            try:
                self.guests.remove(name)
            except LabError:
                pass                       # never defined: the tour stopped before

        removed = 0
        for image in self.storage.list_images():
            if image.startswith(f"{PREFIX}-") and image != f"{PREFIX}-golden":
                self.storage.remove_image(image, with_snapshots=True, flatten_children=True)
                removed += 1
        if self.storage.image_exists(f"{PREFIX}-golden"):
            self.storage.remove_image(f"{PREFIX}-golden", with_snapshots=True, flatten_children=True)
            removed += 1
        shutil.rmtree(self.backups, ignore_errors=True)
        return f"{len(getattr(self, 'names', []))} domains undefined, {removed} images removed"

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _ephemeral(index: int) -> bool:
        return index % 2 == 0

    def _in_guest(self, name: str, *argv: str) -> str:
        """Run a command in a guest; its output, or a DemoFailure with what it said."""
        done = self.guests.run(name, list(argv))
        if done.exit_code != 0:
            raise DemoFailure(f"{name}: {' '.join(argv)}: exit {done.exit_code}: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def _digest(self, spec: str) -> str:
        pool, _, rest = spec.partition("/")
        image, _, snap = rest.partition("@")
        digest = hashlib.sha256()
        with self.storage.cluster.image(pool, image, snapshot=snap or None, read_only=True) as img:
            size = img.size()
            for offset in range(0, size, 4 * MiB):
                digest.update(img.read(offset, min(4 * MiB, size - offset)))
        return digest.hexdigest()


class _Stop(Exception):
    """A step failed: the tour stops, the report keeps the failure."""


def run(lab: Lab, settings: DemoSettings, *, report_path: Path | None,
        progress: Callable[[str], None]) -> Report:
    report = Tour(lab, settings, progress).run()
    if report_path is not None:
        report_path.write_text(report.table() + "\n")
    return report
