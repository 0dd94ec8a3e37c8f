"""The guest kit: a Linux kernel and an initramfs, made from Debian's packages, for the lab's real guests.

Debian's cloud kernel (ext4 built in, virtio as modules), busybox and the QEMU
guest agent are downloaded as packages (``apt-get download``: nothing is
installed on the host) and unpacked into a scratch folder; the initramfs holds
busybox, the agent with the host's copies of the libraries it links, the
virtio modules and virtrbd's scripts (``files/``).  The kit is kept in a folder
beside the lab's and rebuilt only when an input changes: a package's version,
a script, a library of the host.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import LabError
from . import cpio

log = logging.getLogger(__name__)

FILES = Path(__file__).with_name("files")
#: the metapackage that names the current cloud kernel, and the other packages the guest is made of
KERNEL_PACKAGE = "linux-image-cloud-amd64"
PACKAGES = ("busybox-static", "qemu-guest-agent")
#: virtio drivers, in the order their dependencies want (from each module's ``depends=``)
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "virtio_blk", "virtio_console")
LOADER = "/lib64/ld-linux-x86-64.so.2"
APT_CACHE = "/var/cache/apt/pkgcache.bin"
#: bumped when the kit's layout changes in a way its inputs do not show
LAYOUT = 1


@dataclass(frozen=True)
class Kit:
    """A built kit: what a domain boots (direct kernel boot), and what it was built from."""

    kernel: Path
    initrd: Path
    key: str
    release: str                # the guest kernel's, e.g. 6.1.0-57-cloud-amd64
    seconds: float              # how long this call took (building or finding it built)
    built: bool                 # False when the cached kit was current


class GuestKit:
    """The kit kept in ``folder`` (world-readable: QEMU runs as its own user and reads the files)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.kernel = self.folder / "vmlinuz"
        self.initrd = self.folder / "initrd.gz"
        self.manifest = self.folder / "kit.json"

    def build(self, *, force: bool = False) -> Kit:
        """The kit, built when missing, out of date or ``force``; a failure names its cause in one line."""
        started = time.monotonic()
        local = _local_key()
        recorded = self._recorded()
        if not force and recorded.get("local") == local and self._files_exist():
            return self._kit(recorded, started, built=False)
        packages = _resolve_packages()
        key = _key(packages, local)
        if not force and recorded.get("key") == key and self._files_exist():
            self.manifest.write_text(json.dumps({**recorded, "local": local}, indent=2) + "\n")
            return self._kit(recorded, started, built=False)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o755)
            debs = self._download(packages)
            with tempfile.TemporaryDirectory(dir=self.folder, prefix=".unpack-") as scratch:
                tree = _unpack(debs, Path(scratch))
                self._write(tree, key, local)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise LabError(f"building the guest kit in {self.folder}: no space left on the device") from None
            raise LabError(f"building the guest kit in {self.folder}: {exc.strerror or exc}") from None
        kit = self._kit(self._recorded(), started, built=True)
        log.info("guest kit built in %.1f s (%s)", kit.seconds, self.folder)
        return kit

    def _kit(self, recorded: dict, started: float, *, built: bool) -> Kit:
        return Kit(self.kernel, self.initrd, recorded["key"], recorded["kernel"].removeprefix("vmlinuz-"),
                   time.monotonic() - started, built)

    def _recorded(self) -> dict:
        try:
            recorded = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def _files_exist(self) -> bool:
        return self.kernel.exists() and self.initrd.exists()

    def _download(self, packages: dict[str, dict]) -> list[Path]:
        """The packages' files in ``folder/debs``, fetched when not there yet (``apt-get download``)."""
        debs = self.folder / "debs"
        debs.mkdir(exist_ok=True)
        wanted = {name: debs / _deb_name(name, info) for name, info in packages.items()}
        missing = [f"{name}={packages[name]['Version']}" for name, path in wanted.items() if not path.exists()]
        if missing:
            done = subprocess.run(["apt-get", "download", "-q", *missing], cwd=debs, capture_output=True, text=True)
            if done.returncode != 0:
                why = [line for line in done.stderr.splitlines() if line.startswith("E:")] or [done.stderr.strip()]
                raise LabError(f"downloading the guest kit's packages ({', '.join(missing)}): {why[-1]}")
        for stale in set(debs.glob("*.deb")) - set(wanted.values()):
            stale.unlink()
        return list(wanted.values())

    def _write(self, tree: Path, key: str, local: str) -> None:
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise LabError(f"the package of {KERNEL_PACKAGE} holds no kernel")
        shutil.copyfile(kernels[-1], self.kernel.with_suffix(".new"))
        self.kernel.with_suffix(".new").replace(self.kernel)
        data = cpio.initramfs(_entries(tree, kernels[-1].name.removeprefix("vmlinuz-")))
        self.initrd.with_suffix(".new").write_bytes(data)
        self.initrd.with_suffix(".new").replace(self.initrd)
        for path in (self.kernel, self.initrd):
            path.chmod(0o644)
        self.manifest.write_text(json.dumps({"key": key, "local": local, "kernel": kernels[-1].name,
                                             "initrd_bytes": len(data)}, indent=2) + "\n")


def _deb_name(name: str, info: dict) -> str:
    """The file ``apt-get download`` saves a package as (an epoch's ':' is written '%3a')."""
    architecture = Path(info["Filename"]).name.rsplit("_", 1)[1]
    return f"{name}_{info['Version'].replace(':', '%3a')}_{architecture}"


def _resolve_packages() -> dict[str, dict]:
    """The exact packages the kit is made of: name → the fields ``apt-cache show`` gives of it."""
    kernel = _apt_cache("depends", KERNEL_PACKAGE)
    versioned = [line.split(":", 1)[1].strip() for line in kernel.splitlines()
                 if line.strip().startswith("Depends:") and "linux-image-" in line]
    if not versioned:
        raise LabError(f"package {KERNEL_PACKAGE} names no kernel: run 'apt-get update'")
    names = [versioned[0], *PACKAGES]
    shown = _apt_cache("show", "--no-all-versions", *names)
    packages: dict[str, dict] = {}
    for stanza in shown.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        packages[fields["Package"]] = {k: fields[k] for k in ("Version", "Filename", "SHA256") if k in fields}
    missing = [name for name in names if name not in packages]
    if missing:
        raise LabError(f"package {missing[0]} is not known to apt: run 'apt-get update'")
    return packages


def _apt_cache(*args: str) -> str:
    done = subprocess.run(["apt-cache", *args], capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise LabError(f"apt-cache {' '.join(args)}: {why}")
    return done.stdout


def _agent_libraries(agent: Path) -> list[Path]:
    """The host's copies of the libraries the agent links (QEMU's packages bring them to the host)."""
    done = subprocess.run(["ldd", str(agent)], capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"ldd {agent}: {done.stderr.strip() or 'failed'}")
    found: list[Path] = []
    missing: list[str] = []
    for line in done.stdout.splitlines():
        name, arrow, where = line.strip().partition(" => ")
        path = where.split(" (")[0].strip()
        if arrow and path == "not found":
            missing.append(name)
        elif arrow and path:
            found.append(Path(path))
    if missing:
        raise LabError(f"the guest agent needs {', '.join(missing)}, which this host lacks: "
                       f"run 'make setup'")
    return found


def _key(packages: dict[str, dict], local: str) -> str:
    """What the kit is made of: the packages apt would give now, and what is on this host (``_local_key``)."""
    return hashlib.sha256(json.dumps({"packages": packages, "local": local}, sort_keys=True).encode()).hexdigest()


def _local_key() -> str:
    """What can change the kit without asking apt: virtrbd's scripts, the agent's libraries on the host,
    and apt's package cache (``apt-get update`` rewrites it: then apt is asked which packages are current)."""
    digest = hashlib.sha256(json.dumps({"layout": LAYOUT, "modules": MODULES}).encode())
    for script in sorted(FILES.iterdir()):
        digest.update(script.name.encode() + b"\0" + script.read_bytes())
    for library in ("/lib/x86_64-linux-gnu/libglib-2.0.so.0", LOADER, APT_CACHE):
        try:
            info = os.stat(library)
            digest.update(f"{library}:{info.st_size}:{info.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"{library}:missing".encode())
    return digest.hexdigest()


def _unpack(debs: list[Path], scratch: Path) -> Path:
    for deb in debs:
        done = subprocess.run(["dpkg-deb", "-x", str(deb), str(scratch)], capture_output=True, text=True)
        if done.returncode != 0:
            raise LabError(f"unpacking {deb.name}: {done.stderr.strip() or 'dpkg-deb failed'}")
    return scratch


def _entries(tree: Path, release: str) -> list[cpio.Entry]:
    """Everything the initramfs holds, parents before children."""
    agent = tree / "usr/sbin/qemu-ga"
    busybox = tree / "bin/busybox"
    for needed in (agent, busybox):
        if not needed.exists():
            raise LabError(f"the guest kit's packages hold no {needed.relative_to(tree)}")
    modules = tree / "lib/modules" / release / "kernel"
    found = {path.stem: path for path in modules.rglob("*.ko") if path.stem in MODULES}
    if len(found) != len(MODULES):
        raise LabError(f"kernel {release} lacks the modules {', '.join(sorted(set(MODULES) - set(found)))}")
    files: dict[str, tuple[bytes, int]] = {
        "init": ((FILES / "init").read_bytes(), 0o755),
        "bin/busybox": (busybox.read_bytes(), 0o755),
        "bin/records": ((FILES / "records").read_bytes(), 0o755),
        "sbin/shutdown": ((FILES / "shutdown").read_bytes(), 0o755),
        "usr/sbin/qemu-ga": (agent.read_bytes(), 0o755),
        "etc/modules": ("\n".join(MODULES).encode() + b"\n", 0o644),
        LOADER.lstrip("/"): (Path(LOADER).read_bytes(), 0o755),
    }
    for library in _agent_libraries(agent):
        files[str(library).lstrip("/")] = (library.read_bytes(), 0o755)
    for name, module in found.items():
        files[f"lib/modules/{name}.ko"] = (module.read_bytes(), 0o644)
    folders = {"dev", "proc", "sys", "run", "mnt", "tmp", "var", "sbin"}
    for inside in files:
        parts = inside.split("/")[:-1]
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    entries = [cpio.directory(folder) for folder in sorted(folders)]
    entries.append(cpio.char_device("dev/console", 5, 1))
    entries += [cpio.file(path, data, mode) for path, (data, mode) in sorted(files.items())]
    return entries
