import pytest

from virtrbd.monitor import Monitor, mon_host, parse_monitors


@pytest.mark.parametrize("text, host, port", [
    ("mon1", "mon1", None),
    ("mon1.example.org:3300", "mon1.example.org", 3300),
    ("192.0.2.7", "192.0.2.7", None),
    ("192.0.2.7:6789", "192.0.2.7", 6789),
    ("2001:db8::1", "2001:db8::1", None),
    ("[2001:db8::1]", "2001:db8::1", None),
    ("[2001:db8::1]:3300", "2001:db8::1", 3300),
    ("::1", "::1", None),
])
def test_parse(text, host, port):
    assert Monitor.parse(text) == Monitor(host, port)


@pytest.mark.parametrize("text", ["", ":3300", "mon:", "mon:abc", "mon:0", "mon:65536", "[mon1]:3300",
                                  "[2001:db8::1", "[::1]x", "999.1.1.1", "bad_host", "-x.example", "a b"])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        Monitor.parse(text)


def test_str_round_trips():
    for text in ("m", "m:1", "10.0.0.1:3300", "[2001:db8::1]:3300", "[::1]"):
        assert str(Monitor.parse(text)) == text


def test_list_and_mon_host():
    monitors = parse_monitors(" a:1, b  [::1]:3 ")
    assert mon_host(monitors) == "a:1,b,[::1]:3"


@pytest.mark.parametrize("text", ["", " , ", "a,a"])
def test_list_rejects(text):
    with pytest.raises(ValueError):
        parse_monitors(text)


def test_ports_are_its_own_or_cephs_two_defaults():
    assert Monitor.parse("mon1:6790").ports == (6790,)
    assert Monitor.parse("[2001:db8::1]").ports == (3300, 6789)
