from pathlib import Path

import pytest
from lxml import etree

from virtrbd.errors import InvalidXMLError
from virtrbd.monitor import Monitor
from virtrbd.xml.common import SecretRef
from virtrbd.xml.pool import PoolDef
from virtrbd.xml.secret import SecretDef

SCHEMAS = Path("/usr/share/libvirt/schemas")
UUID = "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"


def valid(xml: str, schema: str) -> bool:
    rng = etree.RelaxNG(etree.parse(str(SCHEMAS / f"{schema}.rng")))
    ok = rng.validate(etree.fromstring(xml.encode()))
    assert ok, rng.error_log
    return ok


def test_secret_literal_xml():
    assert SecretDef("ceph client.virt", uuid=UUID).to_xml() == f"""<secret ephemeral="no" private="yes">
  <uuid>{UUID}</uuid>
  <usage type="ceph">
    <name>ceph client.virt</name>
  </usage>
</secret>
"""


@pytest.mark.parametrize("secret", [
    SecretDef("ceph client.virt"),
    SecretDef("ceph client.virt", uuid=UUID, description="hypervisor key"),
])
def test_secret_round_trip_and_schema(secret):
    xml = secret.to_xml()
    assert valid(xml, "secret")
    assert SecretDef.from_xml(xml) == secret


POOLS = [
    PoolDef("p1", "rbd", (Monitor("127.0.0.1", 3300),)),
    PoolDef("p5", "vms", tuple(Monitor(f"mon{i}.example.org", 3300) for i in range(5)), "virt",
            SecretRef(uuid=UUID)),
    PoolDef("p6", "vms", (Monitor("2001:db8::1", 3300), Monitor("::1")), "virt", SecretRef(usage="ceph virt"),
            uuid=UUID, config_opts=(("client_mount_timeout", "5"), ("rbd_cache", "false"))),
]


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: p.name)
def test_pool_round_trip_and_schema(pool):
    xml = pool.to_xml()
    assert valid(xml, "storagepool")
    assert PoolDef.from_xml(xml) == pool


def test_pool_without_options_drops_the_namespace_element():
    assert "config_opts" not in POOLS[0].to_xml()
    assert "<auth" not in POOLS[0].to_xml()


def test_parses_libvirts_own_pool_dumpxml():
    dumped = f"""<pool type='rbd' xmlns:rbd='http://libvirt.org/schemas/storagepool/rbd/1.0'>
  <name>ceph</name>
  <uuid>{UUID}</uuid>
  <capacity unit='bytes'>8589934592</capacity>
  <allocation unit='bytes'>0</allocation>
  <available unit='bytes'>8589934592</available>
  <source>
    <host name='127.0.0.1' port='40100'/>
    <name>rbd</name>
    <auth type='ceph' username='virt'>
      <secret uuid='{UUID}'/>
    </auth>
  </source>
  <rbd:config_opts>
    <rbd:option name='client_mount_timeout' value='10'/>
  </rbd:config_opts>
</pool>"""
    pool = PoolDef.from_xml(dumped)
    assert pool == PoolDef("ceph", "rbd", (Monitor("127.0.0.1", 40100),), "virt", SecretRef(uuid=UUID),
                           uuid=UUID, config_opts=(("client_mount_timeout", "10"),))


def test_operator_template_additions_pass_through(tmp_path):
    (tmp_path / "pool.xml").write_text("<pool type='rbd'><name/><source><name/><host/></source>"
                                       "<features><cow state='yes'/></features></pool>")
    xml = POOLS[0].to_xml(template_dir=tmp_path)
    assert "<cow state=\"yes\"/>" in xml
    assert PoolDef.from_xml(xml) == POOLS[0]


@pytest.mark.parametrize("bad", [
    "<pool type='dir'><name>x</name></pool>",
    "<pool type='rbd'><name>x</name></pool>",
    "<pool type='rbd'><name>x</name><source><name>rbd</name></source></pool>",
    "<pool type='rbd'><name>x</name><source><name>rbd</name><host name='h' port='99999'/></source></pool>",
    "<pool type='rbd'><name>x</name><source><name>rbd</name><host name='h'/><auth type='ceph' username='u'/></source></pool>",
    "<secret><usage type='volume'><volume>/x</volume></usage></secret>",
])
def test_bad_documents_are_one_line_errors(bad):
    parse = SecretDef.from_xml if bad.startswith("<secret") else PoolDef.from_xml
    with pytest.raises(InvalidXMLError) as info:
        parse(bad)
    assert "\n" not in str(info.value)


def test_pool_needs_monitors_and_paired_auth():
    with pytest.raises(ValueError):
        PoolDef("p", "rbd", ())
    with pytest.raises(ValueError):
        PoolDef("p", "rbd", (Monitor("h"),), auth_username="virt")
    with pytest.raises(ValueError):
        SecretRef(uuid=UUID, usage="x")


def test_a_pool_read_from_a_document_prints_as_that_document():
    """Nothing added (no <refresh> the input lacked), nothing lost (elements virtrbd does not model)."""
    text = ("<pool type='rbd' xmlns:rbd='http://libvirt.org/schemas/storagepool/rbd/1.0'><name>ceph</name>"
            "<uuid>2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11</uuid><capacity unit='bytes'>0</capacity>"
            "<source><host name='10.0.0.1' port='6789'/><host name='2001:db8::1'/><name>vms</name>"
            "<auth username='hv' type='ceph'><secret usage='ceph client.hv'/></auth></source>"
            "<rbd:config_opts><rbd:option name='client_mount_timeout' value='10'/></rbd:config_opts></pool>")
    from xml.etree.ElementTree import canonicalize
    printed = PoolDef.from_xml(text).to_xml()
    assert canonicalize(printed, strip_text=True) == canonicalize(text, strip_text=True)
    assert "refresh" not in printed


def test_a_secret_read_from_a_document_prints_as_that_document():
    """libvirt's own secret-dumpxml: nothing added (no private attribute the input lacked), nothing lost."""
    from xml.etree.ElementTree import canonicalize
    text = ("<secret ephemeral='no'><uuid>2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11</uuid>"
            "<description>hv01's key</description><usage type='ceph'><name>ceph client.hv01</name></usage></secret>")
    printed = SecretDef.from_xml(text).to_xml()
    assert canonicalize(printed, strip_text=True) == canonicalize(text, strip_text=True)


def test_a_changed_secret_changes_only_what_changed():
    import dataclasses
    text = "<secret ephemeral='no'><usage type='ceph'><name>ceph client.hv01</name></usage></secret>"
    changed = dataclasses.replace(SecretDef.from_xml(text), description="new")
    root = etree.fromstring(changed.to_xml())
    assert root.get("ephemeral") == "no" and root.findtext("description") == "new"
