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


def test_a_stream_is_read_only_up_to_the_limit():
    class Endless:
        requested = 0

        def read(self, size):
            self.requested = size
            return b"<" * size

    stream = Endless()
    with pytest.raises(InvalidXMLError, match="larger than"):
        safe.parse_stream(stream, what="stdin", max_bytes=1024)
    assert stream.requested == 1025


def test_a_file_is_parsed_or_named_in_the_error(tmp_path):
    path = tmp_path / "d.xml"
    path.write_text("<a/>")
    assert safe.parse_file(path).tag == "a"
    with pytest.raises(InvalidXMLError, match=r"none\.xml: cannot read: No such file"):
        safe.parse_file(tmp_path / "none.xml")


def test_a_50_mb_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "big.xml"
    with path.open("wb") as out:
        out.truncate(50 * 1024 * 1024)
    with pytest.raises(InvalidXMLError, match="larger than 4096 KiB"):
        safe.parse_file(path)
