"""The volume model: libvirt's units, raw only, names as strict as image specs."""

from __future__ import annotations

import pytest

from virtrbd.errors import InvalidSpecError, InvalidXMLError
from virtrbd.xml.volume import VolumeDef


def test_literal_xml():
    assert VolumeDef("vm1-root", 10 * 2**30).to_xml() == """<volume type="network">
  <name>vm1-root</name>
  <capacity unit="bytes">10737418240</capacity>
  <target>
    <format type="raw"/>
  </target>
</volume>
"""


@pytest.mark.parametrize("amount, unit, size", [
    ("5", None, 5), ("5", "b", 5), ("5", "bytes", 5),
    ("3", "k", 3 * 1024), ("3", "KiB", 3 * 1024), ("3", "KB", 3000),
    ("2", "M", 2 << 20), ("2", "MB", 2_000_000), ("20", "G", 20 << 30), ("20", "GiB", 20 << 30),
    ("1", "T", 1 << 40), ("1", "TB", 10**12), ("1", "P", 1 << 50), ("1", "E", 1 << 60),
])
def test_reads_libvirts_units(amount, unit, size):
    unit_attr = f" unit='{unit}'" if unit else ""
    xml = f"<volume><name>v</name><capacity{unit_attr}>{amount}</capacity></volume>"
    assert VolumeDef.from_xml(xml).capacity == size


@pytest.mark.parametrize("xml, words", [
    ("<volume><name>v</name></volume>", "missing <capacity>"),
    ("<volume><name>v</name><capacity unit='parsecs'>1</capacity></volume>", "unknown unit 'parsecs'"),
    ("<volume><name>v</name><capacity>-1</capacity></volume>", "not a whole number"),
    ("<volume><name>v</name><capacity>1.5</capacity></volume>", "not a whole number"),
    ("<volume><name>v</name><capacity>1</capacity><target><format type='qcow2'/></target></volume>", "raw only"),
    ("<volume type='file'><name>v</name><capacity>1</capacity></volume>", "not an rbd volume"),
    ("<volume><name>../etc</name><capacity>1</capacity></volume>", "invalid image name"),
    ("<volume><name>a@b</name><capacity>1</capacity></volume>", "invalid image name"),
    ("<volume><capacity>1</capacity></volume>", "invalid image name"),
    ("<pool/>", "expected a <volume> document"),
])
def test_parsing_refuses_in_one_line(xml, words):
    with pytest.raises(InvalidXMLError, match=words) as info:
        VolumeDef.from_xml(xml)
    assert "\n" not in str(info.value)


def test_constructor_refuses_bad_names_and_sizes():
    with pytest.raises(InvalidSpecError):
        VolumeDef("rbd/x", 1)
    for size in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError):
            VolumeDef("x", size)


def test_a_volume_read_from_a_document_keeps_its_units_and_what_libvirt_wrote():
    from xml.etree.ElementTree import canonicalize
    text = ("<volume><name>vm7-root</name><capacity unit='G'>20</capacity>"
            "<target><format type='raw'/><permissions><mode>0600</mode></permissions></target></volume>")
    volume = VolumeDef.from_xml(text)
    assert volume.capacity == 20 << 30
    assert canonicalize(volume.to_xml(), strip_text=True) == canonicalize(text, strip_text=True)
