"""The qemu hook without services: its no-op path, its refusals, and its decisions against fakes."""

from __future__ import annotations

import errno
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from virtrbd import ceph, hook

UUID = "0f06ada2-0539-4a99-88fc-a7470d4c39cc"
REPO = Path(__file__).resolve().parents[2]


def domain(clone_of="rbd/gold@golden", ephemeral="yes", target="vda", image="rbd/vm1-disk", extra=""):
    return f"""<domain type='kvm'><name>vm1</name><uuid>{UUID}</uuid>
<metadata><virtrbd:clones xmlns:virtrbd="urn:x-virtrbd:domain:1">
<virtrbd:disk target="{target}" clone-of="{clone_of}" ephemeral="{ephemeral}"/></virtrbd:clones></metadata>
<devices><disk type='network' device='disk'><source protocol='rbd' name='{image}'>
<host name='127.0.0.1' port='3300'/></source><target dev='vda' bus='virtio'/></disk>{extra}</devices></domain>""".encode()


def call(args, data: bytes, config_path=None, isolated=False):
    """The hook in this process (its fakes' calls are seen here), unless ``isolated``."""
    err = io.StringIO()
    code = hook.run(["vm1", *args], config_path=config_path, stdin=io.BytesIO(data), stderr=err, isolated=isolated)
    return code, err.getvalue()


class Untouchable(io.BytesIO):
    def read(self, *args):
        raise AssertionError("stdin must not be read on the no-op path")


@pytest.mark.parametrize("op", [("start", "begin"), ("started", "begin"), ("stopped", "end"),
                                ("migrate", "begin"), ("restore", "begin"), ("reconnect", "begin"),
                                ("prepare", "end"), ("release", "begin"), ("frobnicate", "now"), ()])
def test_other_calls_are_no_ops_that_do_not_even_read_stdin(op):
    assert hook.run(["vm1", *op, "-"], stdin=Untouchable(), stderr=io.StringIO()) == 0


def test_domains_without_markup_are_left_alone(tmp_path):
    plain = b"<domain><name>vm</name><uuid>" + UUID.encode() + b"</uuid></domain>"
    assert call(["prepare", "begin", "-"], plain, config_path=str(tmp_path / "absent.conf")) == (0, "")


@pytest.mark.parametrize("data, words", [
    (b"<domain urn:x-virtrbd:domain:1", "not well-formed"),
    (b'<!DOCTYPE d [<!ENTITY e "urn:x-virtrbd:domain:1">]><domain>&e;</domain>', "DOCTYPE"),
    (b"<domain>" + b"urn:x-virtrbd:domain:1" + b" " * (hook.MAX_INPUT + 1) + b"</domain>", "larger than"),
    (domain(clone_of="rbd/gold"), "names no snapshot"),
    (domain(clone_of="rbd/../x@s"), "invalid image spec"),
    (domain(ephemeral="maybe"), "not yes or no"),
    (domain(target="vdb"), "names disk vdb, which is not an rbd disk"),
    (domain(image="rbd/a@b@c"), "invalid image spec"),
])
def test_bad_input_stops_prepare_with_one_line(tmp_path, conf, data, words):
    code, err = call(["prepare", "begin", "-"], data, config_path=str(conf.path))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("virtrbd: vm1: prepare: ") and words in err
    code, err = call(["release", "end", "-"], data, config_path=str(conf.path))
    assert code == 0 and words in err      # release cannot stop anything: say it, exit 0


def test_missing_config_stops_prepare(tmp_path):
    code, err = call(["prepare", "begin", "-"], domain(), config_path=str(tmp_path / "none.conf"))
    assert code == 1 and "config file not found" in err


def test_a_config_without_keyring_is_refused(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("[ceph]\nmonitors = 127.0.0.1\n[libvirt]\nsecret_uuid = " + UUID + "\n[hook]\nlog = stderr\n")
    code, err = call(["prepare", "begin", "-"], domain(), config_path=str(path))
    assert code == 1 and "must not ask libvirt for the key" in err


@pytest.fixture
def cluster_fakes(mocker, fake_rados, fake_rbd, conf):
    """Point the hook at the fake bindings; the image of the domain does not exist yet."""
    mocker.patch.object(ceph.cluster, "_import_bindings", return_value=(fake_rados, fake_rbd))
    image = fake_rbd.Image.return_value
    image.size.return_value = 1 << 30
    image.is_protected_snap.return_value = True
    image.get_parent_image_spec.side_effect = fake_rbd.ImageNotFound("none", errno=errno.ENOENT)
    image.list_snaps.return_value = []
    image.watchers_list.return_value = []
    conf.path.write_text(conf.path.read_text() + "[hook]\nlog = stderr\n")
    return fake_rbd, image


def test_prepare_clones_a_missing_image_and_records_its_owner(cluster_fakes, conf):
    fake_rbd, image = cluster_fakes
    code, err = call(["prepare", "begin", "-"], domain(), config_path=str(conf.path))
    assert (code, err) == (0, "")
    clone_args = fake_rbd.RBD.return_value.clone.call_args.args
    assert (clone_args[1], clone_args[2], clone_args[4]) == ("gold", "golden", "vm1-disk")
    key, value = image.metadata_set.call_args.args
    assert key == hook.OWNER_KEY and json.loads(value) == {"domain": UUID, "ephemeral": True}


def test_prepare_works_on_its_disk_beside_disks_it_has_no_markup_for(cluster_fakes, conf):
    """A legacy 'pool/image:option=value' name, a hostless rbd disk and a file disk never stop the marked one."""
    fake_rbd, _image = cluster_fakes
    others = ("<disk type='network' device='disk'><source protocol='rbd' name='rbd/old:conf=/etc/ceph/x.conf'>"
              "<host name='127.0.0.1'/></source><target dev='vdb' bus='virtio'/></disk>"
              "<disk type='network' device='disk'><source protocol='rbd' name='rbd/hostless'/>"
              "<target dev='vdc' bus='virtio'/></disk>"
              "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/x.img'/>"
              "<target dev='vdd' bus='virtio'/></disk>")
    code, err = call(["prepare", "begin", "-"], domain(extra=others), config_path=str(conf.path))
    assert (code, err) == (0, "")
    clone_args = fake_rbd.RBD.return_value.clone.call_args.args
    assert (clone_args[1], clone_args[2], clone_args[4]) == ("gold", "golden", "vm1-disk")


def test_prepare_leaves_an_existing_clone_alone(cluster_fakes, conf):
    fake_rbd, image = cluster_fakes
    fake_rbd.RBD.return_value.clone.side_effect = fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    no_parent = fake_rbd.ImageNotFound("none", errno=errno.ENOENT)
    image.get_parent_image_spec.side_effect = [    # gold@golden: none; the disk: gold@golden; then none
        no_parent, {"pool_name": "rbd", "image_name": "gold", "snap_name": "golden"}, no_parent]
    assert call(["prepare", "begin", "-"], domain(), config_path=str(conf.path)) == (0, "")
    image.metadata_set.assert_not_called()
    fake_rbd.RBD.return_value.remove.assert_not_called()


def test_prepare_leaves_an_existing_image_with_data_alone(cluster_fakes, conf):
    fake_rbd, image = cluster_fakes
    fake_rbd.RBD.return_value.clone.side_effect = fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    image.diff_iterate.side_effect = lambda offset, length, snap, cb, **kw: cb(0, 4096, True)
    assert call(["prepare", "begin", "-"], domain(), config_path=str(conf.path)) == (0, "")
    fake_rbd.RBD.return_value.remove.assert_not_called()


def test_prepare_replaces_the_empty_remains_of_an_interrupted_clone(cluster_fakes, conf):
    fake_rbd, image = cluster_fakes
    exists = fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    fake_rbd.RBD.return_value.clone.side_effect = [exists, exists, None]    # asked, converged, made again
    assert call(["prepare", "begin", "-"], domain(), config_path=str(conf.path)) == (0, "")
    assert fake_rbd.RBD.return_value.remove.call_args.args[1] == "vm1-disk"
    key, value = image.metadata_set.call_args.args
    assert key == hook.OWNER_KEY and json.loads(value)["domain"] == UUID


def test_prepare_on_a_migrations_destination_leaves_the_open_image_untouched(cluster_fakes, conf, caplog):
    """A client (the source's QEMU) has the clone open: the domain is arriving, not new; nothing is
    inspected, flattened or replaced, even when the image looks like the empty remains of a clone."""
    fake_rbd, image = cluster_fakes
    fake_rbd.RBD.return_value.clone.side_effect = fake_rbd.ImageExists("exists", errno=errno.EEXIST)
    image.watchers_list.return_value = [{"addr": "127.0.0.1:0/42", "id": 1, "cookie": 2}]
    with caplog.at_level("INFO", logger="virtrbd.hook"):
        assert call(["prepare", "begin", "-"], domain(), config_path=str(conf.path)) == (0, "")
    assert fake_rbd.RBD.return_value.clone.call_count == 1
    fake_rbd.RBD.return_value.remove.assert_not_called()
    image.diff_iterate.assert_not_called()
    image.flatten.assert_not_called()
    assert "open by 127.0.0.1:0/42" in caplog.text and "left untouched" in caplog.text


def test_prepare_reuses_an_existing_image_even_when_its_golden_snapshot_is_gone(cluster_fakes, conf):
    fake_rbd, image = cluster_fakes
    missing = fake_rbd.ImageNotFound("x", errno=errno.ENOENT)
    fake_rbd.Image.side_effect = [missing, image, image]     # snapshot absent (gold exists), the disk exists
    assert call(["prepare", "begin", "-"], domain(), config_path=str(conf.path)) == (0, "")
    fake_rbd.RBD.return_value.clone.assert_not_called()


def test_prepare_reports_a_missing_golden_snapshot(cluster_fakes, conf):
    fake_rbd, image = cluster_fakes
    missing = fake_rbd.ImageNotFound("x", errno=errno.ENOENT)
    fake_rbd.Image.side_effect = [missing, image, missing]   # snapshot absent (gold exists), no disk yet
    code, err = call(["prepare", "begin", "-"], domain(), config_path=str(conf.path))
    assert code == 1 and "snapshot rbd/gold@golden: does not exist" in err
    fake_rbd.RBD.return_value.clone.assert_not_called()


@pytest.mark.parametrize("record, removed", [
    ({"domain": UUID, "ephemeral": True}, True),
    ({"domain": "11111111-2222-3333-4444-555555555555", "ephemeral": True}, False),   # another domain's clone
    ({"domain": UUID, "ephemeral": False}, False),                                    # made persistent
    (None, False),                                                                    # a user's image
    ("not json", False),
])
def test_release_removes_only_this_domains_ephemeral_clones(cluster_fakes, conf, record, removed):
    fake_rbd, image = cluster_fakes

    def metadata_get(key):
        if key != hook.OWNER_KEY or record is None:
            raise KeyError(key)
        return record if isinstance(record, str) else json.dumps(record)
    image.metadata_get.side_effect = metadata_get
    assert call(["release", "end", "-"], domain(), config_path=str(conf.path)) == (0, "")
    assert fake_rbd.RBD.return_value.remove.called is removed


def test_release_keeps_an_ephemeral_clone_another_qemu_has_open_and_says_so_at_info(cluster_fakes, conf, caplog):
    """After a live migration the source releases the domain while the destination's QEMU runs on the
    clone (and a failed incoming migration releases it on the destination): decided, not refused."""
    fake_rbd, image = cluster_fakes
    image.metadata_get.side_effect = lambda key: json.dumps({"domain": UUID, "ephemeral": True})
    image.watchers_list.return_value = [{"addr": "127.0.0.1:0/42", "id": 1, "cookie": 2}]
    with caplog.at_level("INFO", logger="virtrbd.hook"):
        assert call(["release", "end", "-"], domain(), config_path=str(conf.path)) == (0, "")
    fake_rbd.RBD.return_value.remove.assert_not_called()
    assert "stays: open by 127.0.0.1:0/42" in caplog.text
    assert not [record for record in caplog.records if record.levelname != "INFO"]


def test_release_of_a_persistent_disk_opens_nothing(cluster_fakes, conf):
    fake_rbd, _image = cluster_fakes
    assert call(["release", "end", "-"], domain(ephemeral="no"), config_path=str(conf.path)) == (0, "")
    fake_rbd.Image.assert_not_called()


def test_release_after_a_failed_start_finds_nothing_to_do(cluster_fakes, conf):
    fake_rbd, _image = cluster_fakes
    fake_rbd.Image.side_effect = fake_rbd.ImageNotFound("x", errno=errno.ENOENT)
    assert call(["release", "end", "-"], domain(), config_path=str(conf.path)) == (0, "")


# --- the worker process: librados may abort it -----------------------------------------------------------

@pytest.fixture
def worker_steps(mocker, tmp_path, conf):
    """The hook's Ceph work replaced by steps, one per worker process started: "abort" ends it as librados
    does (SIGABRT, no core), "fail" raises, "ok" returns; each worker appends what it did to a file (a
    child's memory is not the test's)."""
    conf.path.write_text(conf.path.read_text() + "[hook]\nlog = stderr\n")
    trail = tmp_path / "trail"
    trail.write_text("")

    def use(*steps):
        def work() -> None:
            import os
            import resource
            step = steps[len(trail.read_text().split())]
            with trail.open("a") as out:
                out.write(f"{step}:{os.getpid()} ")
            if step == "abort":
                import faulthandler
                faulthandler.disable()                  # pytest's: it would print the child's stack
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                os.abort()
            if step == "fail":
                from virtrbd.errors import NotFoundError
                raise NotFoundError("image rbd/gold@golden: not found")
        mocker.patch.object(hook, "_do", return_value=work)
        return trail
    return use


def test_a_worker_that_librados_aborts_is_replaced_and_the_call_succeeds(worker_steps, conf, caplog):
    import os
    trail = worker_steps("abort", "ok")
    code, err = call(["prepare", "begin", "-"], domain(), config_path=str(conf.path), isolated=True)
    steps = trail.read_text().split()
    assert code == 0 and err == "" and [s.split(":")[0] for s in steps] == ["abort", "ok"]
    assert str(os.getpid()) not in {s.split(":")[1] for s in steps}      # never in the hook's own process
    assert "worker process ended by SIGABRT" in caplog.text and "trying again" in caplog.text


def test_a_worker_aborted_every_time_stops_prepare_with_one_line(worker_steps, conf):
    trail = worker_steps("abort", "abort", "ok")
    code, err = call(["prepare", "begin", "-"], domain(), config_path=str(conf.path), isolated=True)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("virtrbd: vm1: prepare: its worker process ended by SIGABRT, 2 times")
    assert len(trail.read_text().split()) == 2
    trail.write_text("")
    code, err = call(["release", "end", "-"], domain(), config_path=str(conf.path), isolated=True)
    assert code == 0 and "ended by SIGABRT" in err           # release cannot stop anything: said, exit 0


def test_a_workers_failure_comes_back_as_the_hooks_one_line_and_is_not_tried_again(worker_steps, conf):
    trail = worker_steps("fail", "ok")
    code, err = call(["prepare", "begin", "-"], domain(), config_path=str(conf.path), isolated=True)
    assert (code, err) == (1, "virtrbd: vm1: prepare: image rbd/gold@golden: not found\n")
    assert len(trail.read_text().split()) == 1
    trail.write_text("")
    assert call(["release", "end", "-"], domain(), config_path=str(conf.path), isolated=True) == \
        (0, "virtrbd: vm1: release: image rbd/gold@golden: not found\n")


def test_importing_the_hook_module_imports_nothing_heavy():
    code = ("import sys, virtrbd.hook; heavy = {'lxml', 'lxml.etree', 'rados', 'rbd', 'libvirt'} & set(sys.modules);"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_script_no_op_path_imports_not_even_virtrbd():
    out = subprocess.run(["/usr/bin/python3", "-S", "-X", "importtime", str(REPO / "hooks" / "qemu"),
                          "vm1", "started", "begin", "-"], input=b"<domain/>", capture_output=True)
    assert out.returncode == 0
    imported = {line.rsplit(b"|", 1)[-1].strip().decode() for line in out.stderr.splitlines() if b"|" in line}
    assert imported and not imported & {"site", "os", "virtrbd", "virtrbd.hook", "lxml", "rados"}, imported


def test_the_work_path_parses_without_lxml(conf, tmp_path):
    """lxml costs ~10 ms to import; the hook reads the domain with the standard library instead."""
    from virtrbd import hook_install
    script = tmp_path / "hook"
    script.write_text(hook_install.render(conf.path))
    xml = domain(target="vdb")     # markup naming a disk the domain lacks: fails after parsing, before Ceph
    out = subprocess.run([sys.executable, "-S", "-X", "importtime", str(script), "vm1", "prepare", "begin", "-"],
                         input=xml, capture_output=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    assert out.returncode == 1 and b"not an rbd disk" in out.stderr
    imported = {line.rsplit(b"|", 1)[-1].strip().decode() for line in out.stderr.splitlines() if b"|" in line}
    assert "virtrbd.xml.clone_markup" in imported, out.stderr[-500:]
    assert not {name for name in imported if name.startswith("lxml")}
    # libvirtd waits for its hook: a call back would deadlock (make lint's contract checks every import path)
    assert not {name for name in imported if name == "libvirt" or name.startswith("virtrbd.libvirt")}


def test_the_hook_script_comes_from_the_checkout_or_from_share_when_installed(mocker, tmp_path):
    from virtrbd import hook_install
    assert hook_install.source() == Path(hook_install.__file__).resolve().parent.parent / "hooks" / "qemu"
    mocker.patch.object(hook_install, "__file__", str(tmp_path / "lib" / "virtrbd" / "hook_install.py"))
    mocker.patch.object(sys, "prefix", "/usr")
    assert hook_install.source() == Path("/usr/share/virtrbd/hooks/qemu")
