import base64
import stat
import struct

from virtrbd.keyring import read_key
from virtrbd.lab.keys import generate_key, keyring_text, write_private


def test_generated_key_has_the_cephx_layout():
    raw = base64.b64decode(generate_key().reveal())
    key_type, _sec, _nsec, length = struct.unpack("<HIIH", raw[:12])
    assert (key_type, length, len(raw)) == (1, 16, 28)
    assert generate_key() != generate_key()


def test_keyring_is_private_and_readable_back(tmp_path):
    key = generate_key()
    path = tmp_path / "k"
    write_private(path, keyring_text({"client.virt": (key, {"mon": "profile rbd"})}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert 'caps mon = "profile rbd"' in path.read_text()
    assert read_key(path, "client.virt") == key


def test_write_private_tightens_an_existing_file(tmp_path):
    path = tmp_path / "k"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
