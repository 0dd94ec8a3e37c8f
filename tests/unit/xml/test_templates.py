"""Where templates come from: the shipped set, or the operator's folder named by [xml] templates."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from virtrbd import config
from virtrbd.errors import ConfigError, InvalidXMLError
from virtrbd.xml import templates
from virtrbd.xml.volume import VolumeDef

ROOT = Path(__file__).resolve().parents[3]


def test_every_document_has_a_shipped_template_and_setup_installs_it():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    installed = setup["options.data_files"]["share/virtrbd/xml_templates"].split()
    for name in templates.NAMES:
        assert (templates.shipped_dir() / f"{name}.xml").is_file()
        assert f"xml_templates/{name}.xml" in installed


def test_a_folder_needs_only_the_templates_it_changes(tmp_path):
    (tmp_path / "volume.xml").write_text("<volume><name/><capacity/><target><format/><nocow/></target></volume>")
    assert templates.load("volume", tmp_path).find("target/nocow") is not None
    assert templates.load("disk", tmp_path).tag == "disk"      # from the shipped set


def test_a_missing_folder_is_an_error_not_a_silent_fallback(tmp_path):
    with pytest.raises(ConfigError, match="template folder not found"):
        VolumeDef("v", 1).to_xml(tmp_path / "typo")


def test_a_template_declaring_entities_is_refused(tmp_path):
    (tmp_path / "volume.xml").write_text('<!DOCTYPE v [<!ENTITY e "x">]><volume><name>&e;</name></volume>')
    with pytest.raises(InvalidXMLError, match="DOCTYPE and ENTITY"):
        VolumeDef("v", 1).to_xml(tmp_path)


def write_conf(tmp_path: Path, keyring: Path, extra: str) -> Path:
    path = tmp_path / "virtrbd.conf"
    path.write_text(f"[ceph]\nmonitors = 192.0.2.10:3300\nkeyring = {keyring}\n{extra}")
    return path


def test_config_names_a_template_folder_relative_to_itself(tmp_path, keyring):
    loaded = config.load(write_conf(tmp_path, keyring, "[xml]\ntemplates = my-templates\n"))
    assert loaded.xml.templates == (tmp_path / "my-templates").resolve()


def test_config_without_xml_section_uses_the_shipped_templates(tmp_path, keyring):
    assert config.load(write_conf(tmp_path, keyring, "")).xml.templates is None


def test_config_refuses_unknown_xml_settings(tmp_path, keyring):
    with pytest.raises(ConfigError, match=r"\[xml\] template: unknown setting"):
        config.load(write_conf(tmp_path, keyring, "[xml]\ntemplate = x\n"))
