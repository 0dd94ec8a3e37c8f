"""``virtrbd xml …`` as a user runs it, without services: documents on stdout, and every bad input
refused in one line with exit 2 before libvirt is contacted (the config points at a libvirt
socket that does not exist, so reaching for it would fail differently, with exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtrbd.monitor import Monitor
from virtrbd.spec import ImageSpec
from virtrbd.xml.common import SecretRef
from virtrbd.xml.disk import DiskDef
from virtrbd.xml.encryption import Encryption
from virtrbd.xml.pool import PoolDef
from virtrbd.xml.secret import SecretDef
from virtrbd.xml.volume import VolumeDef

from ...cli_helpers import assert_one_line_error, virtrbd

UUID = "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"
MONITORS = (Monitor("192.0.2.10", 3300), Monitor("2001:db8::1", 3300))


@pytest.fixture
def env(tmp_path: Path, keyring: Path) -> dict[str, str]:
    path = tmp_path / "virtrbd.conf"
    path.write_text(f"[ceph]\nmonitors = 192.0.2.10:3300, [2001:db8::1]:3300\nclient_id = virt\nkeyring = {keyring}\n"
                    f"pool = rbd\n[libvirt]\nuri = qemu+unix:///system?socket={tmp_path}/no-such-socket\n"
                    f"secret_uuid = {UUID}\npool = ceph-vms\n")
    return {"VIRTRBD_CONF": str(path)}


def run(env, *args, **kwargs):
    result = virtrbd("xml", *args, env=env, **kwargs)
    assert result.code == 0 and result.err == "", result
    return result.out


def test_secret(env):
    assert SecretDef.from_xml(run(env, "secret", "--validate")) == SecretDef(
        "ceph-vms client.virt", uuid=UUID, description="cephx key of client.virt for libvirt pool ceph-vms")


def test_pool(env):
    pool = PoolDef.from_xml(run(env, "pool", "--validate"))
    assert (pool.name, pool.source_name, pool.monitors, pool.secret) == ("ceph-vms", "rbd", MONITORS,
                                                                       SecretRef(uuid=UUID))


def test_volume(env):
    assert VolumeDef.from_xml(run(env, "volume", "--image", "vm1", "--size", "10G", "--validate")) == \
        VolumeDef("vm1", 10 << 30)


def test_disk_takes_monitors_and_auth_from_the_config(env):
    out = run(env, "disk", "--image", "rbd/vm1", "--target", "vda", "--validate")
    assert DiskDef.from_xml(out) == DiskDef(ImageSpec("rbd", "vm1"), "vda", MONITORS, "virt", SecretRef(uuid=UUID))


def test_disk_options(env):
    out = run(env, "disk", "--image", "golden@base", "--target", "sdb", "--bus", "scsi", "--cache", "none",
              "--discard", "unmap", "--io", "threads", "--serial", "G 1", "--iotune", "total_iops_sec=500",
              "--iotune", "read_bytes_sec=1000", "--monitors", "[::1]:3300,mon.example.org", "--validate")
    assert DiskDef.from_xml(out) == DiskDef(
        ImageSpec("rbd", "golden", "base"), "sdb", (Monitor("::1", 3300), Monitor("mon.example.org")), "virt",
        SecretRef(uuid=UUID), bus="scsi", cache="none", discard="unmap", io="threads", read_only=True,
        serial="G 1", iotune=(("total_iops_sec", 500), ("read_bytes_sec", 1000)))


def test_the_configs_template_folder_is_used(env, tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "disk.xml").write_text("<disk><driver name='qemu' type='raw' cache='writeback'/>"
                                               "<source/><target/></disk>")
    conf = Path(env["VIRTRBD_CONF"])
    conf.write_text(conf.read_text() + "[xml]\ntemplates = tpl\n")
    assert DiskDef.from_xml(run(env, "disk", "--image", "rbd/vm1", "--target", "vda")).cache == "writeback"


def test_a_disk_read_from_a_domain(env, tmp_path):
    domain = Path(__file__).parent / "data" / "domain-dumpxml-in.xml"
    out = run(env, "disk", "--from", str(domain), "--target", "sdb")
    assert DiskDef.from_xml(out).image == ImageSpec("vms", "vm1-data")
    out = run(env, "disk", "--from", "-", "--target", "vda", input=domain.read_text())
    assert DiskDef.from_xml(out).image == ImageSpec("rbd", "golden-debian12", "base")


MIXED = f"""<domain type='kvm'><name>vm1</name><devices>
<disk type='network' device='disk'><driver name='qemu' type='vmdk'/>
  <source protocol='rbd' name='rbd/imported'><host name='192.0.2.10'/></source><target dev='vda'/></disk>
<disk type='network' device='disk'><source protocol='rbd' name='rbd/old:rbd_cache=true'/><target dev='vdb'/></disk>
<disk type='network' device='disk'><driver name='qemu' type='raw'/>
  <source protocol='rbd' name='rbd/secure'>
    <encryption format='luks' engine='librbd'><secret type='passphrase' uuid='{UUID}'/></encryption>
  </source><target dev='vdc'/></disk>
<disk type='file' device='disk'><source file='/var/lib/x.img'/><target dev='vdd'/></disk>
</devices></domain>"""


def test_a_disk_virtrbd_does_not_handle_never_stops_another(env):
    out = run(env, "disk", "--from", "-", "--target", "vdc", input=MIXED)
    disk = DiskDef.from_xml(out)
    assert disk.image == ImageSpec("rbd", "secure") and disk.monitors == ()
    assert disk.encryption == Encryption("luks", "librbd", SecretRef(uuid=UUID))   # the guest never sees ciphertext


@pytest.mark.parametrize("target, words", [("vda", "driver type 'vmdk'"), ("vdb", "invalid image name 'old:rbd_cache=true'")])
def test_a_disk_virtrbd_does_not_handle_prints_as_it_was_with_a_warning(env, target, words):
    result = virtrbd("xml", "disk", "--from", "-", "--target", target, env=env, input=MIXED)
    assert result.code == 0 and words in result.err and len(result.err_lines) == 1, result
    assert f"<target dev=\"{target}\"/>" in result.out
    refused = virtrbd("xml", "disk", "--from", "-", "--target", target, "--define", "--domain", "vm1", env=env,
                      input=MIXED)
    assert_one_line_error(refused, 2, f"disk {target}: ", "virtrbd does not act on it")


@pytest.mark.parametrize("args, words", [
    (("disk", "--image", "rbd/../x", "--target", "vda", "--define", "--domain", "vm1"),
     "invalid image spec 'rbd/../x'"),
    (("disk", "--image", "a@b@c", "--target", "vda", "--define", "--domain", "vm1"), "invalid image spec 'a@b@c'"),
    (("disk", "--image", "rbd/x", "--target", "vda", "--monitors", "", "--define", "--domain", "vm1"),
     "no monitor given"),
    (("pool", "--monitors", " , ", "--define"), "no monitor given"),
    (("pool", "--monitors", "192.0.2.1:70000", "--define"), "port 70000 out of range"),
    (("disk", "--image", "rbd/x", "--target", "vda", "--monitors", "[2001:db8::1]:0"), "port 0 out of range"),
    (("disk", "--image", "rbd/x", "--target", "xda"), "target 'xda' is not a disk device name"),
    (("disk", "--image", "rbd/x", "--target", "vda", "--iotune", "burst=5"), "unknown iotune limit 'burst'"),
    (("disk", "--image", "rbd/x", "--target", "vda", "--iotune", "total_iops_sec"), "NAME=WHOLE_NUMBER"),
    (("disk", "--image", "rbd/x", "--target", "vda", "--cache", "fast"), "invalid choice: 'fast'"),
    (("disk", "--image", "rbd/x", "--target", "vda", "--serial", "a/b"), "serial"),
    (("disk", "--image", "rbd/x"), "--target is required"),
    (("disk", "--image", "rbd/x", "--target", "vda", "--define"), "--define needs --domain"),
    (("disk", "--image", "rbd/x", "--target", "vda", "--domain", "vm1"), "--domain is for --define"),
    (("volume", "--image", "rbd/x@s", "--size", "1G"), "name an image here, not a snapshot"),
    (("volume", "--image", "rbd/x"), "--size is required"),
    (("volume", "--image", "rbd/x", "--size", "ten"), "'ten' is not a size"),
    (("volume", "--image", "other/x", "--size", "1G", "--define"), "holds the images of Ceph pool rbd only"),
    (("pool", "--from", "/nonexistent.xml", "--define"), "/nonexistent.xml: cannot read"),
    (("disk", "--from", "-", "--image", "rbd/x"), "drop --image"),
])
def test_bad_input_is_one_line_exit_2_before_libvirt(env, args, words):
    assert_one_line_error(virtrbd("xml", *args, env=env), 2, words)


ENTITY = '<!DOCTYPE pool [<!ENTITY e "rbd">]><pool type="rbd"><name>&e;</name></pool>'


@pytest.mark.parametrize("kind", ["secret", "pool", "volume", "disk"])
def test_xml_with_an_entity_declaration_is_refused(env, tmp_path, kind):
    path = tmp_path / "evil.xml"
    path.write_text(ENTITY)
    assert_one_line_error(virtrbd("xml", kind, "--from", str(path), "--define", env=env), 2,
                          "DOCTYPE and ENTITY declarations are not accepted")


def test_a_50_mb_document_is_refused(env, tmp_path):
    path = tmp_path / "big.xml"
    with path.open("w") as out:
        out.write("<pool type='rbd'><name>")
        out.write("x" * (50 * 1024 * 1024))
        out.write("</name></pool>")
    assert_one_line_error(virtrbd("xml", "pool", "--from", str(path), "--define", env=env), 2, "larger than 4096 KiB")
    assert_one_line_error(virtrbd("xml", "pool", "--from", "-", "--define", env=env, input=path.read_text()), 2,
                          "stdin: larger than 4096 KiB")


def test_an_operator_template_with_an_entity_is_refused(env, tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "secret.xml").write_text('<!DOCTYPE s [<!ENTITY e "x">]><secret>&e;</secret>')
    assert_one_line_error(virtrbd("xml", "secret", "--templates", str(tmp_path / "tpl"), "--define", env=env), 2,
                          "DOCTYPE and ENTITY")


def test_validate_names_the_first_schema_error(env, tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "disk.xml").write_text("<disk><driver name='qemu' type='raw' cache='fastest'/>"
                                               "<source/><target/></disk>")
    result = virtrbd("xml", "disk", "--image", "rbd/x", "--target", "vda", "--templates", str(tmp_path / "tpl"),
                     "--validate", "--define", "--domain", "vm1", env=env)
    assert_one_line_error(result, 2, "domain.rng", "/disk/driver: Invalid attribute cache")
    # without --validate the same document is printed: validation is the user's choice
    assert 'cache="fastest"' in run(env, "disk", "--image", "rbd/x", "--target", "vda",
                                    "--templates", str(tmp_path / "tpl"))


def test_good_input_with_define_does_reach_for_libvirt(env):
    """The counterpart of the tests above: past validation, the missing socket is what fails (exit 1)."""
    result = virtrbd("xml", "secret", "--define", env=env)
    assert_one_line_error(result, 1, "cannot connect to libvirt")
