import re
from pathlib import Path

import pytest

from virtrbd import config
from virtrbd.errors import ConfigError
from virtrbd.monitor import Monitor


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "virtrbd.conf"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_minimal_file_gets_documented_defaults(tmp_path, keyring):
    conf = config.load(write(tmp_path, f"[ceph]\nmonitors = mon1\nkeyring = {keyring}\n"))
    assert conf.ceph.monitors == (Monitor("mon1"),)
    assert conf.ceph.client_id == "admin"
    assert conf.ceph.pool == "rbd"
    assert (conf.ceph.client_mount_timeout, conf.ceph.rados_mon_op_timeout, conf.ceph.rados_osd_op_timeout) == (10, 10, 10)
    assert conf.libvirt.uri == "qemu:///system"
    assert conf.libvirt_pool == "rbd"


def test_full_file(tmp_path, keyring):
    conf = config.load(write(tmp_path, f"""
[ceph]
monitors = 10.0.0.1:3300, mon-b.example.org ,[2001:db8::3]:6789
client_id = hv01
keyring = {keyring}   ; a comment
pool = vms
client_mount_timeout = 5
rados_mon_op_timeout = 6
rados_osd_op_timeout = 7
[libvirt]
uri = qemu+ssh://root@h/system
secret_uuid = 2EE6C5B4-7C6B-4E51-A0C8-6C3B5C8B8A11
pool = ceph-vms
"""))
    assert conf.ceph.monitors == (Monitor("10.0.0.1", 3300), Monitor("mon-b.example.org"), Monitor("2001:db8::3", 6789))
    assert conf.ceph.entity == "client.hv01"
    assert conf.ceph.rados_osd_op_timeout == 7
    assert conf.libvirt.secret_uuid == "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"
    assert conf.libvirt_pool == "ceph-vms"


def test_relative_keyring_is_relative_to_the_config_file(tmp_path, keyring):
    conf = config.load(write(tmp_path, f"[ceph]\nmonitors = m\nkeyring = {keyring.name}\n"))
    assert conf.ceph.keyring == keyring


@pytest.mark.parametrize("text, expected", [
    ("[ceph]\nkeyring = /k\n", "[ceph] monitors: missing required setting"),
    ("[ceph]\nmonitors = m\nkeyring = /k\nmonitor = x\n", "[ceph] monitor: unknown setting"),
    ("[ceph]\nmonitors = m:70000\nkeyring = /k\n", "[ceph] monitors: port 70000 out of range"),
    ("[ceph]\nmonitors = ,\nkeyring = /k\n", "[ceph] monitors: no monitor given"),
    ("[ceph]\nmonitors = m\nkeyring = /k\nclient_mount_timeout = soon\n", "[ceph] client_mount_timeout: 'soon' is not"),
    ("[ceph]\nmonitors = m\nkeyring = /k\nrados_osd_op_timeout = 0\n", "[ceph] rados_osd_op_timeout: 0 s is out of range"),
    ("[ceph]\nmonitors = m\nkeyring = /k\npool = a/b\n", "[ceph] pool: 'a/b' is not a valid name"),
    ("[ceph]\nmonitors = m\n", "[ceph] keyring: missing"),
    ("[ceph]\nmonitors = m\nkeyring = /k\n[libvirt]\nsecret_uuid = nope\n", "[libvirt] secret_uuid: 'nope' is not a UUID"),
    ("[ceph]\nmonitors = m\nkeyring = /k\n[libvirt]\nuri = system\n", "[libvirt] uri: 'system' is not a libvirt URI"),
    ("[ceph]\nmonitors = m\nkeyring = /k\n[cephx]\n", "[cephx]: unknown section"),
    ("[ceph]\nmonitors = m\nmonitors = n\n", "[ceph] monitors: set twice"),
    ("monitors = m\n", "a setting before any [section]"),
    ("[ceph]\nmonitors = m\n[ceph]\n", "section [ceph] appears twice"),
    ("[ceph]\nmonitors = m\nkeyring = /k\n[backup]\nrecipients = age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73"
     "equnujwq\n", "[backup] recipients: 'age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwq' is not an "
     "age recipient: its checksum does not match"),
    ("[ceph]\nmonitors = m\nkeyring = /k\n[backup]\nrecipients = ssh-ed25519\n", "[backup] recipients: 'ssh-ed25519' "
     "is not an age recipient"),
])
def test_bad_settings_name_file_section_and_key(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_missing_file_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.conf: config file not found .*VIRTRBD_CONF"):
        config.load(tmp_path / "nope.conf")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_path_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    assert config.resolve_path() == Path("/etc/virtrbd/virtrbd.conf")
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "env.conf"))
    assert config.resolve_path() == tmp_path / "env.conf"
    assert config.resolve_path(tmp_path / "cli.conf") == tmp_path / "cli.conf"


def test_render_round_trips_through_load(tmp_path, keyring):
    text = config.render({"ceph": {"monitors": (Monitor("::1", 3300), Monitor("h")), "keyring": keyring,
                                   "client_id": "virt"},
                          "libvirt": {"secret_uuid": "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"}})
    conf = config.parse(text, tmp_path / "x.conf")
    assert conf.ceph.monitors == (Monitor("::1", 3300), Monitor("h"))
    assert conf.libvirt.secret_uuid == "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"


def test_render_refuses_unknown_settings():
    with pytest.raises(ValueError):
        config.render({"ceph": {"monitor": "x"}})


def test_describe_lists_every_setting():
    text = config.describe()
    for key in ("monitors", "client_id", "keyring", "pool", "client_mount_timeout", "rados_mon_op_timeout",
                "rados_osd_op_timeout", "uri", "secret_uuid"):
        assert f"  {key} " in text


@pytest.mark.parametrize("key, value", [("pool", ".hidden"), ("pool", "-x"), ("client_id", ".virt")])
def test_a_name_no_image_spec_could_use_is_refused_at_load(tmp_path, key, value):
    """The config and image specs share one name pattern: a default pool no spec could name fails here."""
    path = tmp_path / "virtrbd.conf"
    path.write_text(f"[ceph]\nmonitors = m\nkeyring = /k\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"\[ceph\] {key}: '{re.escape(value)}' is not a valid name"):
        config.load(path)


AGE_RECIPIENTS = ("age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj",      # c2sp.org/age's example
                  "age1sg2d99qzh98pvhh2236gwywqhmpllengpavysdsj6tqyteptsseqnme9l7")


def test_backup_recipients_are_public_keys_separated_by_commas_or_spaces(tmp_path, keyring):
    conf = config.load(write(tmp_path, f"[ceph]\nmonitors = m\nkeyring = {keyring}\n"))
    assert conf.backup.recipients == ()                                   # unencrypted unless asked
    conf = config.load(write(tmp_path, f"[ceph]\nmonitors = m\nkeyring = {keyring}\n[backup]\n"
                                       f"recipients = {AGE_RECIPIENTS[0]},\n  {AGE_RECIPIENTS[1].upper()}\n"))
    assert conf.backup.recipients == AGE_RECIPIENTS


def test_a_private_identity_in_the_config_is_refused_and_never_echoed(tmp_path):
    identity = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
    message = error_of(tmp_path, f"[ceph]\nmonitors = m\nkeyring = /k\n[backup]\nrecipients = {identity}\n")
    assert "[backup] recipients: holds a private identity" in message and identity not in message
    assert "GFPYYSJZ" not in message
