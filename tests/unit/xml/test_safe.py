import pytest

from virtrbd.errors import InvalidXMLError
from virtrbd.xml import safe


def test_parses_plain_xml():
    assert safe.parse("<a><b>x</b></a>").find("b").text == "x"


@pytest.mark.parametrize("data, words", [
    ("", "empty document"),
    ("not xml", "not well-formed"),
    ("<a><b></a>", "not well-formed"),
    ('<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>', "DOCTYPE"),
    ('<!DOCTYPE a SYSTEM "http://example.org/a.dtd"><a/>', "DOCTYPE"),
    ('<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/shadow">]><a>&x;</a>', "DOCTYPE"),
    ('<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><a>&lol2;</a>', "DOCTYPE"),
    ("<a>" + "x" * (safe.MAX_BYTES + 1) + "</a>", "larger than"),
])
def test_refuses(data, words):
    with pytest.raises(InvalidXMLError, match=words) as info:
        safe.parse(data, what="test XML")
    assert str(info.value).startswith("test XML: ")
    assert "\n" not in str(info.value)
