"""Two hypervisors in the lab and live migration of real guests on hook-made clones between them.

Host a is the lab's libvirtd, host b a second one in its own mount namespace
(``virtrbd lab up --hosts 2``).  A guest writes numbered records (each with its
checksum, fsynced) to its disk while it migrates; the records it called durable
before a migration must be there after it, and new ones must follow.  The
hook's logs of both hosts must show decisions, never a warning.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from virtrbd import Storage
from virtrbd.lab import CephSpec, Lab, processes
from virtrbd.lab.guest import migration
from virtrbd.probe import listening

from ..cli_helpers import assert_one_line_error, virtrbd

PREFIX = "virtrbd-test-mig-"


@pytest.fixture(scope="module")
def hosts(lab):
    """The shared lab with host b, and virtrbd's hook on a (b's the lab installs)."""
    lab.lab.up(with_libvirt=True, hosts=2)
    assert virtrbd("hook", "install", env=lab.env).code == 0
    yield lab
    virtrbd("hook", "uninstall", env=lab.env)


@pytest.fixture(scope="module")
def golden(hosts):
    name = f"{PREFIX}gold-{uuid.uuid4().hex[:6]}"
    assert virtrbd("lab", "golden", "create", f"rbd/{name}", "--size", "64M", env=hosts.env).code == 0
    yield f"rbd/{name}@golden"
    with Storage(hosts.conf_path) as storage:
        for image in storage.list_images():
            if image.startswith(PREFIX):
                storage.remove_image(image, with_snapshots=True, flatten_children=True)


@pytest.fixture
def guest(hosts):
    """A fresh guest name; the guest goes again after the test, from every host."""
    name = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    yield name
    for host in migration.defined_on(hosts.lab, name):
        hosts.lab.guests(host).remove(name)


def vm(lab, *args, timeout: float = 120):
    return virtrbd("lab", "vm", *args, env=lab.env, timeout=timeout)


def hook_logs(lab) -> dict[str, Path]:
    return {"a": lab.lab.root / "hook.log", "b": lab.lab.second_host().dir / "hook.log"}


def log_sizes(lab) -> dict[str, int]:
    return {host: path.stat().st_size if path.exists() else 0 for host, path in hook_logs(lab).items()}


def logged_since(lab, sizes: dict[str, int]) -> dict[str, str]:
    """What each host's hook logged since ``sizes`` were taken."""
    said = {}
    for host, path in hook_logs(lab).items():
        with open(path, "rb") if path.exists() else open("/dev/null", "rb") as log:
            log.seek(sizes[host])
            said[host] = log.read().decode(errors="replace")
    return said


def assert_no_warning(said: dict[str, str]) -> None:
    for host, text in said.items():
        assert not re.search(r" (WARNING|ERROR|CRITICAL) ", text), f"host {host}'s hook: {text}"


def watchers(lab, image: str) -> list[str]:
    with Storage(lab.conf_path) as storage, storage.cluster.image("rbd", image, read_only=True) as opened:
        return [w["addr"] for w in opened.watchers_list()]


def durable(lab, name: str) -> int:
    said = vm(lab, "exec", name, "--", "records", "durable")
    assert said.code == 0, said.err
    return int(said.out)


def last_valid(lab, name: str) -> int:
    said = vm(lab, "exec", name, "--", "records", "last", "vda")
    assert said.code == 0, said.err
    return int(said.out.split()[1])


def migrate(lab, name: str, to: str, *extra: str) -> str:
    done = vm(lab, "migrate", name, "--to", to, *extra)
    assert done.code == 0, done.err
    return done.out


def test_lab_status_lists_both_hosts_with_their_uris(hosts):
    status = virtrbd("lab", "status", "--json", env=hosts.env)
    import json
    listed = {host["name"]: host for host in json.loads(status.out)["hosts"]}
    assert listed["a"]["uri"] == "qemu:///system" and listed["a"]["state"] == "up"
    assert listed["b"]["uri"].startswith("qemu:///system?socket=") and listed["b"]["state"] == "up"
    assert virtrbd("lab", "up", "--hosts", "2", env=hosts.env).out.startswith("lab already up")


def test_a_guest_on_an_ephemeral_clone_migrates_there_and_back_writing_records(hosts, golden, guest):
    disk = f"{guest}-disk"
    sizes = log_sizes(hosts)
    assert vm(hosts, "create", guest, "--disk", f"rbd/{disk}", "--clone-of", golden, "--ephemeral").code == 0
    assert vm(hosts, "exec", guest, "--", "records", "start", "vda").code == 0
    time.sleep(1)
    for to, extra in (("b", ()), ("a", ("--p2p",))):
        before = durable(hosts, guest)
        said = migrate(hosts, guest, to, *extra)
        assert f"to host {to}" in said and ("peer-to-peer" in said) == bool(extra)
        assert migration.locate(hosts.lab, guest) == to
        assert last_valid(hosts, guest) >= before                     # nothing durable was lost
        time.sleep(1)
        assert durable(hosts, guest) > before                         # and new records follow
        assert len(watchers(hosts, disk)) == 1                        # only the destination's QEMU
    assert vm(hosts, "exec", guest, "--", "records", "stop").code == 0
    assert vm(hosts, "rm", guest).code == 0
    with Storage(hosts.conf_path) as storage:
        assert not storage.image_exists(disk)
    said = logged_since(hosts, sizes)
    assert_no_warning(said)
    removed = [line for text in said.values() for line in text.splitlines() if "removed ephemeral clone" in line]
    assert len(removed) == 1 and disk in removed[0]                   # once, by the last host
    assert "left untouched" in said["b"] and "stays: open by" in said["a"]


def test_a_failed_migration_leaves_the_guest_running_and_its_clone_intact(hosts, golden, guest):
    from virtrbd.lab import libvirt_side
    from virtrbd.libvirt.host import Host
    from virtrbd.xml.secret import SecretDef
    disk = f"{guest}-disk"
    info = hosts.state["libvirt"]
    assert vm(hosts, "create", guest, "--disk", f"rbd/{disk}", "--clone-of", golden, "--ephemeral").code == 0
    assert vm(hosts, "exec", guest, "--", "records", "start", "vda").code == 0
    b = hosts.lab.second_host()
    with Host(b.uri) as host_b:
        host_b.remove_secret(SecretDef(usage_name=info["secret_usage"], uuid=info["secret_uuid"]))
    try:
        sizes = log_sizes(hosts)
        before = durable(hosts, guest)
        failed = vm(hosts, "migrate", guest, "--to", "b")
        assert_one_line_error(failed, 1, "migrating guest", "secret")
        assert migration.locate(hosts.lab, guest) == "a"
        time.sleep(1)
        assert durable(hosts, guest) > before and last_valid(hosts, guest) >= before
        said = logged_since(hosts, sizes)
        assert_no_warning(said)
        assert "removed" not in said["b"]
        assert len(watchers(hosts, disk)) == 1
    finally:
        libvirt_side.define_objects(hosts.lab.ceph_cluster(), info, uri=b.uri)
    assert vm(hosts, "rm", guest).code == 0


def test_a_persistent_clone_moves_with_its_definition_and_survives_both_releases(hosts, golden, guest):
    disk = f"{guest}-disk"
    assert vm(hosts, "create", guest, "--disk", f"rbd/{disk}", "--clone-of", golden).code == 0
    migrate(hosts, guest, "b", "--undefinesource")
    assert migration.defined_on(hosts.lab, guest) == ["b"]
    migrate(hosts, guest, "a", "--p2p", "--undefinesource")
    assert migration.defined_on(hosts.lab, guest) == ["a"]
    assert vm(hosts, "rm", guest).code == 0
    with Storage(hosts.conf_path) as storage:
        assert storage.image_exists(disk)                             # persistent: a user's to remove
        storage.remove_image(disk)


def test_ten_migrations_in_a_row_lose_nothing_and_stall_no_longer_than_the_downtime(hosts, golden, guest):
    import json
    disk = f"{guest}-disk"
    assert vm(hosts, "create", guest, "--disk", f"rbd/{disk}", "--clone-of", golden, "--ephemeral").code == 0
    assert vm(hosts, "exec", guest, "--", "records", "start", "vda").code == 0
    downtimes = []
    for round_no in range(10):
        before = durable(hosts, guest)
        done = vm(hosts, "migrate", guest, "--to", "ab"[(round_no + 1) % 2], "--json", *(("--p2p",) * (round_no % 2)))
        assert done.code == 0, done.err
        downtimes.append(json.loads(done.out)["downtime_ms"] or 0)
        assert last_valid(hosts, guest) >= before
    longest = vm(hosts, "exec", guest, "--", "records", "longest")
    assert longest.code == 0
    assert int(longest.out) <= max(downtimes) + 1000, (longest.out, downtimes)
    assert vm(hosts, "exec", guest, "--", "records", "stop").code == 0
    assert vm(hosts, "rm", guest).code == 0


@pytest.mark.parametrize("args, words", [
    (("lab", "up", "--hosts", "0"), "1 to 2 hypervisors"),
    (("lab", "up", "--hosts", "3"), "1 to 2 hypervisors"),
    (("lab", "vm", "migrate", "virtrbd-test-mig-none", "--to", "b"), "not defined on any of the lab's hosts"),
    (("lab", "vm", "migrate", "virtrbd-test-mig-none", "--to", "c"), "host c: the lab has no such hypervisor"),
    (("lab", "vm", "create", "virtrbd-test-mig-none", "--disk", "x", "--host", "c"), "host c: the lab has no"),
])
def test_bad_input_is_one_line_and_changes_nothing(hosts, args, words):
    before = migration.uris(hosts.lab)
    assert_one_line_error(virtrbd(*args, env=hosts.env), 2 if args[2] == "--hosts" else 1, words)
    assert migration.uris(hosts.lab) == before


def test_a_migration_to_the_host_it_runs_on_is_refused(hosts, golden, guest):
    assert vm(hosts, "create", guest, "--disk", f"rbd/{guest}-disk", "--clone-of", golden, "--ephemeral",
              "--host", "b").code == 0
    assert_one_line_error(vm(hosts, "migrate", guest, "--to", "b"), 1, "already runs on host b")
    assert migration.locate(hosts.lab, guest) == "b"
    assert vm(hosts, "exec", guest, "--", "true").code == 0                # found on b, as stop and rm find it
    assert vm(hosts, "stop", guest).code == 0
    assert migration.defined_on(hosts.lab, guest) == ["b"]
    assert vm(hosts, "rm", guest).code == 0 and migration.defined_on(hosts.lab, guest) == []
    with Storage(hosts.conf_path) as storage:
        assert not storage.image_exists(f"{guest}-disk")              # its ephemeral clone went with it


def test_a_lab_of_two_hosts_goes_down_leaving_no_process_mount_or_namespace(tmp_path):
    from virtrbd import config
    from virtrbd.lab.domains import BOOT_SECTOR, domain_xml
    from virtrbd.libvirt.host import Host
    other = Lab(tmp_path / "lab2")
    spec = CephSpec(port=40600, mgr=False)
    assert other.up(spec, hosts=2) is True
    b = other.second_host()
    try:
        conf = config.load(b.conf_file)
        with Storage(conf) as storage:
            storage.create_image("fw", 4 << 20)
            with storage.cluster.image("rbd", "fw") as image:
                image.write(BOOT_SECTOR, 0)
        with Host(b.uri) as host_b:                  # a firmware domain running on b: its QEMU is in b's namespace
            host_b.conn.createXML(domain_xml(conf, "virtrbd-test-mig-fw", "rbd/fw", domain_type="qemu"))
        b_daemons = [d for d in other.daemons() if d.name.endswith("@b")]
        assert len(b_daemons) == 2
        namespace = Path(f"/proc/{b_daemons[0].pid}/ns/mnt").readlink()
    finally:
        other.down()
    assert not any(processes.is_ours(d) for d in b_daemons)
    assert not listening("127.0.0.1", b.tcp_port, timeout=0.2)
    left = [pid for pid in Path("/proc").iterdir() if pid.name.isdigit() and _namespace(pid) == namespace
            and processes.alive(int(pid.name))]
    assert left == [], f"processes left in host b's namespace: {left}"
    assert not b.dir.exists() and not (tmp_path / "lab2").exists()


def _namespace(pid: Path):
    try:
        return (pid / "ns" / "mnt").readlink()
    except OSError:
        return None
