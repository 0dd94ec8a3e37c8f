"""The corpus of rbd documents (tests/xml_corpus.py): libvirt's schemas accept each, and virtrbd reads and
prints each back canonically the same — nothing dropped, added or reordered."""

from __future__ import annotations

import pytest

from virtrbd.xml import safe, schema
from virtrbd.xml.disk import DiskDef
from virtrbd.xml.pool import PoolDef
from virtrbd.xml.secret import SecretDef
from virtrbd.xml.volume import VolumeDef

from ...cli_helpers import virtrbd
from ...xml_corpus import CORPUS, EXTENDED
from .canon import canonical

MODELS = {"secret": SecretDef, "pool": PoolDef, "volume": VolumeDef, "disk": DiskDef}


def ids(entry) -> str:
    return entry[0]


@pytest.mark.parametrize("entry", CORPUS, ids=ids)
def test_read_then_printed_is_the_same_document(entry):
    _, kind, text = entry
    original = safe.parse(text)
    schema.validate(original, kind)                     # the corpus holds only what libvirt allows
    model = MODELS[kind].from_element(original)         # a disk virtrbd acts on, not a ForeignDisk
    printed = safe.parse(model.to_xml())
    assert canonical(printed) == canonical(original)
    schema.validate(printed, kind)


@pytest.mark.parametrize("entry", EXTENDED, ids=ids)
def test_extension_elements_and_attributes_are_kept_in_order(entry):
    _, kind, text = entry
    original = safe.parse(text)
    assert canonical(safe.parse(MODELS[kind].from_element(original).to_xml())) == canonical(original)


def test_the_corpus_covers_what_the_issue_names():
    disks = [text for _, kind, text in CORPUS if kind == "disk"]
    assert len(disks) >= 500
    for words in (["<host"], ["<source protocol='rbd' name='rbd/vm1'></source>"], ["<auth", "<source"],
                  ["</source><auth"], ["<snapshot"], ["<config file"], ["format='luks'"], ["format='luks2'"],
                  ["engine='qemu'"], ["engine='librbd'"], ["2001:db8::1"], ["mon2.example.org"], ["<iotune>"]):
        assert any(all(w in text for w in words) for text in disks), words
    pools = [text for _, kind, text in CORPUS if kind == "pool"]
    assert any("<rbd:option" in text for text in pools) and any("allocation='capacity'" in text for text in pools)
    assert any("<refresh/>" in text for text in pools) and any("<refresh>" not in text for text in pools)


SAMPLE = CORPUS[::23] + EXTENDED


@pytest.mark.parametrize("entry", SAMPLE, ids=ids)
def test_the_command_prints_the_document_it_read(entry, tmp_path, keyring):
    name, kind, text = entry
    path = tmp_path / f"{name}.xml"
    path.write_text(text)
    args = ("xml", kind, "--from", str(path)) + (("--validate",) if entry in CORPUS else ())
    (tmp_path / "virtrbd.conf").write_text(f"[ceph]\nmonitors = 192.0.2.10\nkeyring = {keyring}\n")
    result = virtrbd(*args, env={"VIRTRBD_CONF": str(tmp_path / "virtrbd.conf")})
    assert result.code == 0 and result.err == "", result
    assert canonical(safe.parse(result.out)) == canonical(safe.parse(text))
