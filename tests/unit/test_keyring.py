import pickle

import pytest

from virtrbd.errors import ConfigError
from virtrbd.keyring import CephKey, read_key

from .conftest import KEY


def test_reads_the_entity_key(keyring):
    assert read_key(keyring, "client.virt").reveal() == KEY


def test_reads_a_bare_key_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    assert read_key(path, "client.any").reveal() == KEY


def test_other_entity_is_missing(keyring):
    with pytest.raises(ConfigError, match="no key for client.admin"):
        read_key(keyring, "client.admin")


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620])
def test_refuses_keyrings_others_can_read_or_write(keyring, mode):
    keyring.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_key(keyring, "client.virt")


def test_missing_keyring(tmp_path):
    with pytest.raises(ConfigError, match="keyring not found"):
        read_key(tmp_path / "none", "client.virt")


def test_garbage_key_is_refused_without_echoing_it(tmp_path):
    path = tmp_path / "k"
    path.write_text("[client.virt]\nkey = not-base64-at-all!\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        read_key(path, "client.virt")
    assert "not-base64" not in str(info.value)


def test_key_is_hidden_from_repr_str_format_and_pickle():
    key = CephKey(KEY)
    for shown in (repr(key), str(key), f"{key}", f"{key!r}", repr([key])):
        assert KEY not in shown
    with pytest.raises(TypeError):
        pickle.dumps(key)
