"""rm, rollback, restore --force and the hook's release touch the image they are asked to — and no other.

Around every target stand decoys whose names differ by one character or share
a prefix (``vm1`` beside ``vm10``, ``vm1-disk``, ``vm2``, ``xvm1``, ``vm1x``).
Each decoy's id, content and snapshots are recorded before the operation and
compared after it.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import libvirt
import pytest

from virtrbd import hook_install
from virtrbd.lab.domains import BOOT_SECTOR, domain_xml, remove_domain

from ..cli_helpers import virtrbd
from ..ledger import LEDGER

MiB = 1 << 20


@pytest.fixture
def decoys(storage):
    """A target name and its decoys, each a written image with a snapshot; all removed afterwards."""
    base = f"ds{uuid.uuid4().hex[:5]}vm1"
    names = [base + "0", base + "-disk", base[:-1] + "2", "x" + base, base + "x"]
    made = [base] + names
    for name in made:
        storage.create_image(name, 8 * MiB)
        with storage.cluster.image("rbd", name) as img:
            img.write(BOOT_SECTOR + os.urandom(MiB), 0)
        storage.create_snapshot(f"{name}@s")
        with storage.cluster.image("rbd", name) as img:
            img.write(os.urandom(4096), 2 * MiB)
    yield base, names
    for name in made:
        if storage.image_exists(name):
            storage.remove_image(name, with_snapshots=True, flatten_children=True)


def fingerprint(storage, name: str):
    info = storage.info(name)
    with storage.cluster.image("rbd", name, read_only=True) as img:
        content = hashlib.sha256(img.read(0, img.size())).hexdigest()
    return info.id, content, [s.name for s in info.snapshots]


def check(storage, names, before, operation: str) -> list[str]:
    touched = []
    for name in names:
        untouched = storage.image_exists(name) and fingerprint(storage, name) == before[name]
        LEDGER.decoy(f"{operation}: {name}", untouched)
        if not untouched:
            touched.append(name)
    return touched


def test_rm_removes_only_its_image(storage, decoys, lab):
    target, names = decoys
    before = {n: fingerprint(storage, n) for n in names}
    result = virtrbd("rm", target, "--with-snapshots", env=lab.env)
    assert result.code == 0, result.err
    assert not storage.image_exists(target)
    assert check(storage, names, before, "rm") == []


def test_rollback_rolls_back_only_its_image(storage, decoys, lab):
    target, names = decoys
    before = {n: fingerprint(storage, n) for n in names}
    with storage.cluster.image("rbd", target, snapshot="s", read_only=True) as snap:
        wanted = hashlib.sha256(snap.read(0, snap.size())).hexdigest()
    assert fingerprint(storage, target)[1] != wanted
    result = virtrbd("snap", "rollback", f"{target}@s", env=lab.env)
    assert result.code == 0, result.err
    assert fingerprint(storage, target)[1] == wanted
    assert check(storage, names, before, "rollback") == []


def test_restore_force_replaces_only_its_image(storage, decoys, lab, tmp_path):
    target, names = decoys
    backup = virtrbd("backup", f"{names[0]}@s", str(tmp_path), env=lab.env)
    assert backup.code == 0, backup.err
    storage.remove_snapshot(f"{target}@s")           # --force replaces images without snapshots only
    before = {n: fingerprint(storage, n) for n in names}
    restored = virtrbd("restore", str(next(tmp_path.glob("*.raw"))), target, "--force", env=lab.env)
    assert restored.code == 0, restored.err
    with storage.cluster.image("rbd", target, read_only=True) as img, \
            storage.cluster.image("rbd", names[0], snapshot="s", read_only=True) as source:
        assert img.read(0, img.size()) == source.read(0, source.size())
    assert check(storage, names, before, "restore --force") == []


def test_hook_release_removes_only_its_own_clone(storage, decoys, lab):
    target, names = decoys
    golden = str(storage.make_golden(f"{target}@s"))
    disk = f"{target}-d"           # the domain's clone; the decoys include "<target>-disk" beside it
    watched = names + [target]     # the golden image itself must come out untouched too
    before = {n: fingerprint(storage, n) for n in watched}
    result = virtrbd("hook", "install", env=lab.env)
    assert result.code == 0, result.err
    conn = libvirt.open(lab.config.libvirt.uri)
    name = f"virtrbd-test-{target}"
    try:
        dom = conn.defineXML(domain_xml(lab.config, name, f"rbd/{disk}", clone_of=golden, ephemeral=True,
                                        domain_type=lab.state["libvirt"]["domain_type"]))
        dom.create()
        assert storage.image_exists(disk)
        dom.destroy()
        assert not storage.image_exists(disk)
    finally:
        remove_domain(conn, name)
        conn.close()
        hook_install.uninstall()
    assert check(storage, watched, before, "hook release") == []
