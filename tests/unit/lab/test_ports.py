"""The lab's ports kept out of the ephemeral range: added once, merged with what an operator reserved."""

from __future__ import annotations

from virtrbd.lab import ports


def test_the_range_is_added_once_beside_what_was_there(tmp_path):
    setting = tmp_path / "reserved"
    setting.write_text("\n")
    assert ports.reserve(40100, 40199, setting)
    assert setting.read_text() == "40100-40199\n"
    setting.write_text("8080,40000-40999\n")
    assert ports.reserve(40300, 40399, setting) and setting.read_text() == "8080,40000-40999\n"
    assert ports.reserve(40700, 40799, setting.with_name("missing")) is False
    setting.write_text("8080\n")
    assert ports.reserve(40800, 40899, setting) and setting.read_text() == "8080,40800-40899\n"
