import pytest
from lxml import etree

from virtrbd.errors import InvalidXMLError
from virtrbd.spec import ImageSpec
from virtrbd.xml import clone_markup
from virtrbd.xml.clone_markup import CloneMarkup

GOLD = ImageSpec("rbd", "gold", "golden")
DISKS = [CloneMarkup("vda", GOLD, ephemeral=True), CloneMarkup("vdb", GOLD, size=10 << 30)]


def in_domain(element) -> etree._Element:
    domain = etree.Element("domain")
    etree.SubElement(domain, "metadata").append(element)
    return domain


def test_literal_markup():
    assert etree.tostring(clone_markup.render(DISKS[:1]), encoding="unicode") == (
        '<virtrbd:clones xmlns:virtrbd="urn:x-virtrbd:domain:1">'
        '<virtrbd:disk target="vda" clone-of="rbd/gold@golden" ephemeral="yes"/></virtrbd:clones>')


def test_round_trip_through_a_domain():
    assert clone_markup.parse(in_domain(clone_markup.render(DISKS))) == DISKS


def test_bare_form_for_libvirts_metadata_api_parses_alike():
    bare = clone_markup.render(DISKS, namespaced=False)
    assert bare.tag == "clones" and bare.nsmap == {}
    assert clone_markup.parse_clones(bare) == DISKS


def test_merge_replaces_entries_of_the_same_target():
    replacement = CloneMarkup("vda", ImageSpec("rbd", "other", "s"))
    assert clone_markup.merge(DISKS, [replacement]) == [DISKS[1], replacement]


def test_a_domain_without_markup_has_none():
    assert clone_markup.parse(etree.fromstring("<domain><metadata><x:y xmlns:x='urn:other'/></metadata></domain>")) == []


@pytest.mark.parametrize("attrs, words", [
    ('target="vda" clone-of="rbd/gold"', "names no snapshot"),
    ('target="vda" clone-of="rbd/../x@s"', "invalid image spec"),
    ('target="v da" clone-of="rbd/g@s"', "invalid target"),
    ('target="vda" clone-of="rbd/g@s" ephemeral="perhaps"', "not yes or no"),
    ('target="vda" clone-of="rbd/g@s" size="-1"', "not a number of bytes"),
    ('target="vda" clone-of="rbd/g@s" size="0"', "invalid size"),
    ('target="vda" clone-of="rbd/g@s" size="big"', "not a number of bytes"),
])
def test_bad_markup_is_one_line(attrs, words):
    domain = etree.fromstring(f'<domain><metadata><v:clones xmlns:v="urn:x-virtrbd:domain:1"><v:disk {attrs}/>'
                              f'</v:clones></metadata></domain>')
    with pytest.raises(InvalidXMLError, match=words):
        clone_markup.parse(domain)


def test_a_target_named_twice_is_refused():
    domain = in_domain(clone_markup.render([DISKS[0], DISKS[0]]))
    with pytest.raises(InvalidXMLError, match="twice"):
        clone_markup.parse(domain)


def test_rbd_disk_images_by_target():
    domain = etree.fromstring("<domain><devices>"
                              "<disk type='network'><source protocol='rbd' name='rbd/a'/><target dev='vda'/></disk>"
                              "<disk type='file'><source file='/x'/><target dev='vdb'/></disk>"
                              "</devices></domain>")
    assert clone_markup.rbd_disk_images(domain) == {"vda": ImageSpec("rbd", "a")}


def test_only_the_disks_asked_about_are_read():
    domain = etree.fromstring(
        "<domain><devices>"
        "<disk type='network'><source protocol='rbd' name='rbd/a'/><target dev='vda'/></disk>"
        "<disk type='network'><source protocol='rbd' name='rbd/legacy:conf=/etc/ceph/ceph.conf'/>"
        "<target dev='vdb'/></disk>"
        "<disk type='file'><source file='/var/lib/x.img'/><target dev='vdc'/></disk>"
        "</devices></domain>")
    assert clone_markup.rbd_disk_images(domain, {"vda"}) == {"vda": ImageSpec("rbd", "a")}
    with pytest.raises(InvalidXMLError, match="disk vdb"):
        clone_markup.rbd_disk_images(domain)
