"""Malformed input to ``virtrbd xml … --define`` against the lab's real libvirtd: one line on stderr,
exit 2, and libvirt exactly as it was — no secret, pool, volume or domain defined or changed."""

from __future__ import annotations

import libvirt
import pytest

from virtrbd.libvirt.host import Host

from ..cli_helpers import assert_one_line_error, virtrbd


def libvirt_snapshot(lab) -> dict:
    """Every object these --define calls could touch, with its full definition.

    Only the lab's own secret and pool and the names the bad documents carry: other tests
    may define objects of their own meanwhile.
    """
    with Host(lab.config.libvirt.uri) as host:
        conn = host.conn
        ours = [p for p in conn.listAllStoragePools(0)
                if p.name() == lab.libvirt_pool or p.name().startswith("virtrbd-test-bad-")]
        return {
            "secret": conn.secretLookupByUUIDString(lab.config.libvirt.secret_uuid).XMLDesc(0),
            "pools": {p.name(): (p.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE), p.isActive(), p.autostart())
                      for p in ours},
            "domains": {d.name(): d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for d in conn.listAllDomains(0)
                        if d.name().startswith("virtrbd-test-bad-")},
        }


@pytest.fixture
def domain(lab):
    """A defined (not running) domain for the disk cases to aim --define at."""
    name = "virtrbd-test-bad-input"
    with Host(lab.config.libvirt.uri) as host:
        dom = host.conn.defineXML(f"<domain type='{lab.state['libvirt']['domain_type']}'><name>{name}</name>"
                                  f"<memory unit='MiB'>64</memory><os><type>hvm</type></os><devices/></domain>")
        try:
            yield name
        finally:
            dom.undefine()


def evil_files(tmp_path):
    entity = tmp_path / "entity.xml"
    entity.write_text('<!DOCTYPE pool [<!ENTITY name "virtrbd-test-bad-pool">]>'
                      '<pool type="rbd"><name>&name;</name><source><name>rbd</name><host name="127.0.0.1"/>'
                      '</source></pool>')
    big = tmp_path / "big.xml"
    with big.open("w") as out:
        out.write("<pool type='rbd'><name>virtrbd-test-bad-big</name><source><name>rbd</name>"
                  "<host name='127.0.0.1'/></source><description>")
        out.write("x" * (50 * 1024 * 1024))
        out.write("</description></pool>")
    return entity, big


def test_malformed_input_defines_nothing(lab, domain, tmp_path):
    entity, big = evil_files(tmp_path)
    disk = ["disk", "--target", "vdb", "--define", "--domain", domain]
    cases = [
        (disk + ["--image", "rbd/../x"], "invalid image spec 'rbd/../x'"),
        (disk + ["--image", "a@b@c"], "invalid image spec 'a@b@c'"),
        (disk + ["--image", "rbd/ok", "--monitors", ""], "no monitor given"),
        (disk + ["--image", "rbd/ok", "--monitors", "127.0.0.1:65536"], "port 65536 out of range"),
        (["pool", "--define", "--monitors", "127.0.0.1:99999"], "port 99999 out of range"),
        (["volume", "--image", "rbd/../x", "--size", "1M", "--define"], "invalid image spec"),
        (["volume", "--image", "a@b@c", "--size", "1M", "--define"], "invalid image spec"),
        (["pool", "--from", str(entity), "--define"], "DOCTYPE and ENTITY declarations are not accepted"),
        (["pool", "--from", str(big), "--define"], "larger than 4096 KiB"),
        (["disk", "--from", str(entity), "--define", "--domain", domain], "DOCTYPE and ENTITY"),
    ]
    before = libvirt_snapshot(lab)
    for args, words in cases:
        assert_one_line_error(virtrbd("xml", *args, env=lab.env), 2, words)
    assert_one_line_error(virtrbd("xml", "pool", "--from", "-", "--define", env=lab.env, input=big.read_text()),
                          2, "stdin: larger than 4096 KiB")
    assert libvirt_snapshot(lab) == before
