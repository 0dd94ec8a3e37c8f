"""The lab every integration test shares: a real Ceph cluster and a real libvirtd on 127.0.0.1.

Brought up once per session (or reused when one is running already) and torn
down at the end only when this session started it.  A lab that cannot come up
is an error, never a skip: CI must not pass without having touched Ceph.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtrbd import Storage, config
from virtrbd.errors import VirtrbdError
from virtrbd.keyring import CephKey, read_key
from virtrbd.lab import Lab

from ..ledger import LEDGER
from ..secret_watch import SecretWatcher
from .backup_support import Images, Judge


@dataclass
class LabHandle:
    lab: Lab
    config: config.Config
    key: CephKey
    state: dict

    @property
    def conf_path(self) -> Path:
        return self.config.path

    @property
    def env(self) -> dict[str, str]:
        return {"VIRTRBD_CONF": str(self.conf_path)}

    @property
    def libvirt_pool(self) -> str:
        return self.state["libvirt"]["pool"]

    def with_ceph(self, **changes) -> config.Config:
        """The lab's config with some [ceph] settings changed."""
        return dataclasses.replace(self.config, ceph=dataclasses.replace(self.config.ceph, **changes))


@pytest.fixture(scope="session")
def lab() -> LabHandle:
    lab = Lab()
    started = lab.up(with_libvirt=True)
    conf = config.load(lab.conf_file)
    state = json_state(lab)
    key = read_key(conf.ceph.keyring, conf.ceph.entity)
    # The client key, as text and as the raw bytes libvirt holds, must never show up in
    # any process's argv or environment while the integration tests run.
    with SecretWatcher([key.reveal().encode(), base64.b64decode(key.reveal())]) as watcher:
        yield LabHandle(lab, conf, key, state)
    if started and not os.environ.get("VIRTRBD_KEEP_LAB"):
        lab.down()
    LEDGER.key_samples += watcher.samples
    LEDGER.key_sightings += sorted(set(watcher.sightings))
    LEDGER.key_sightings += scan_for_key(key, lab.root)
    print(f"\nsecret watcher: {watcher.samples} samples of every process, {len(watcher.sightings)} key sightings")
    assert LEDGER.key_sightings == [], f"the client key was seen in: {LEDGER.key_sightings}"


@pytest.fixture(scope="module", autouse=True)
def lab_survives_the_module(request, lab):
    """After each module, the shared lab must still be the one the session started, and healthy.

    A module that breaks the lab (or rebuilds it) would otherwise show up as a
    cascade of unrelated failures in later modules; this names the module and
    the cause (a dead daemon and its last log line, or the monitor's report).
    """
    yield
    problems = lab.lab.problems()
    if not problems and not _same_key(lab):
        problems = ["the lab was rebuilt (its client key changed)"]
    if problems:
        pytest.fail(f"the shared lab broke during {request.module.__name__}: " + "; ".join(problems), pytrace=False)


def _same_key(lab: LabHandle) -> bool:
    try:
        return read_key(lab.config.ceph.keyring, lab.config.ceph.entity).reveal() == lab.key.reveal()
    except VirtrbdError:
        return False


def scan_for_key(key, lab_root) -> list[str]:
    """Every output of the CLI runs, and the hook's log: none may hold the key."""
    from ..cli_helpers import RESULTS
    secret = key.reveal()
    found = [f"output of virtrbd {' '.join(r.args)}" for r in RESULTS if secret in r.out or secret in r.err]
    for hook_log in (Path(lab_root) / "hook.log", Path(lab_root) / "host-b" / "hook.log"):   # hosts a and b
        if hook_log.exists() and secret in hook_log.read_text(errors="replace"):
            found.append(str(hook_log))
    return found


def json_state(lab: Lab) -> dict:
    import json
    return json.loads(lab.state_file.read_text())


@pytest.fixture
def storage(lab):
    with Storage(lab.config) as storage:
        yield storage


@pytest.fixture
def image_name(storage):
    """A unique image name, removed after the test whatever state it is left in."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    if storage.image_exists(name):
        storage.remove_image(name)


@pytest.fixture
def judge(lab) -> Judge:
    """Ceph's and QEMU's own tools, pointed at the lab with the restricted user's keyring."""
    return Judge(lab.lab.root / "ceph" / "ceph.conf", lab.config.ceph.keyring, str(lab.config.ceph.monitors[0]))


@pytest.fixture
def images(storage):
    """Images made with bare librbd for one test, removed after it."""
    made = Images(storage)
    yield made
    made.cleanup()
