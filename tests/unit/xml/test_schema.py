"""--validate: libvirt's own RelaxNG schemas, and a one-line error naming the first problem."""

from __future__ import annotations

import pytest

from virtrbd.errors import ConfigError, InvalidXMLError
from virtrbd.monitor import Monitor
from virtrbd.spec import ImageSpec
from virtrbd.xml import schema
from virtrbd.xml.disk import DiskDef
from virtrbd.xml.volume import VolumeDef

DISK = DiskDef(ImageSpec("rbd", "vm1"), "vda", (Monitor("127.0.0.1", 3300),))


def test_a_bad_attribute_is_named():
    element = DISK.to_element()
    element.find("driver").set("cache", "bogus")
    with pytest.raises(InvalidXMLError, match=r"domain\.rng: /disk/driver: Invalid attribute cache") as info:
        schema.validate(element, "disk")
    assert "\n" not in str(info.value)


def test_a_missing_element_is_named():
    element = VolumeDef("v", 1).to_element()
    element.remove(element.find("target"))
    with pytest.raises(InvalidXMLError, match=r"storagevol\.rng: /volume: Expecting an element target"):
        schema.validate(element, "volume")


def test_the_disk_schema_is_libvirts_domain_grammar():
    # a disk alone is not a domain: checked from the grammar's 'disk' definition, not its start
    with pytest.raises(InvalidXMLError):
        schema.validate(DISK.to_element(), "domain")
    schema.validate(DISK.to_element(), "disk")


def test_missing_schemas_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="RelaxNG schema is missing"):
        schema.validate(DISK.to_element(), "disk", schema_dir=tmp_path)
