"""More than a hundred bad inputs, each met with one clear line and a non-zero exit, and no change anywhere.

Across CLI arguments, config files, image specs, the hook's argv and stdin, and
backup files.  Every case runs the real command in a child process; before and
after the whole corpus, the pool's images (with their snapshots) and every file
the cases point at are compared, so "nothing changed" is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtrbd import hook_install
from virtrbd.lab.domains import domain_xml

from ..cli_helpers import virtrbd
from ..ledger import LEDGER

pytestmark = pytest.mark.slow

KEYRING_TEXT = "[client.virt]\n\tkey = {key}\n"


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...] = ()
    stdin: bytes | None = None
    config: str | None = None          # name of a config in the corpus folder, "" for none at all
    codes: tuple[int, ...] = (1, 2)
    words: str = ""                    # expected in the message
    hook: str | None = None            # "prepare" / "release": run the hook script instead


SPECS = ["rbd/../x", "a@b@c", "/img", "rbd/", "rbd/img@", "rbd/.hidden", "rbd/-dash", "rbd/sp ace",
         "rbd/tab\tx", "rbd/new\nline", "rbd/é", "p/" + "x" * 300, "a/b/c", "@snap", "rbd//x"]

CASES: list[Case] = []

# --- CLI arguments ---------------------------------------------------------------------------------
CASES += [
    Case("no command"), Case("unknown command", ("frobnicate",)), Case("unknown option", ("ls", "--frob")),
    Case("create without size", ("create", "rbd/x")), Case("size not a number", ("create", "rbd/x", "--size", "lots")),
    Case("size with a bad unit", ("create", "rbd/x", "--size", "10Q")), Case("size zero", ("create", "rbd/x", "--size", "0")),
    Case("negative size", ("create", "rbd/x", "--size", "-5G")), Case("fractional bytes", ("create", "rbd/x", "--size", "1.5")),
    Case("resize without size", ("resize", "rbd/x")), Case("snap without action", ("snap",)),
    Case("snap unknown action", ("snap", "explode", "rbd/x@s")), Case("clone without child", ("clone", "rbd/x@s")),
    Case("lab unknown action", ("lab", "reboot")), Case("lab zero osds", ("lab", "up", "--osds", "0")),
    Case("lab nine osds", ("lab", "up", "--osds", "9")), Case("lab low port", ("lab", "up", "--port", "22")),
    Case("lab high port", ("lab", "up", "--port", "65500")), Case("lab bad store", ("lab", "up", "--store", "zfs")),
    Case("lab kill unknown daemon", ("lab", "kill", "osd.99"), words="no Ceph daemon"),
    Case("backup bad format", ("backup", "rbd/x@s", "/tmp", "--format", "vmdk")),
    Case("backup bad cluster size", ("backup", "rbd/x@s", "/tmp", "--format", "qcow2", "--cluster-size", "3K")),
    Case("backup bad recipient", ("backup", "rbd/x@s", "/tmp", "--recipient", "age1nope"), codes=(2,),
         words="not an age recipient"),
    Case("backup identity as recipient", ("backup", "rbd/x@s", "/tmp", "--recipient",
                                          "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"),
         codes=(2,), words="a private identity"),
    Case("restore with a missing identity file", ("restore", "/nonexistent/x.qcow2", "rbd/x", "--identity",
                                                   "/nonexistent/operator.key"), codes=(2,), words="identity file"),
    Case("backup-key over an existing file", ("backup-key", "new", "--out", "/etc/hostname"), codes=(2,),
         words="exists already"),
    Case("verify bad signer", ("verify", "/nonexistent/x.qcow2", "--signer", "virtrbd-signer1nope"), codes=(2,),
         words="not a virtrbd signer"),
    Case("restore signing key as signer", ("restore", "/nonexistent/x.qcow2", "rbd/x", "--signer",
                                           "VIRTRBD-SIGNING-KEY-1QQQSYQCYQ5RQWZQFPG9SCRGWPUGPZYSNZS23V9CCRYDPK8QARC0SYZ75KA"),
         codes=(2,), words="a private signing key"),
    Case("backup-key show of a file others read", ("backup-key", "show", "/etc/hostname"), codes=(2,),
         words="others may read it"),
    Case("demo batch above domains", ("demo", "--domains", "5", "--batch", "6")),
    Case("demo zero domains", ("demo", "--domains", "0")),
    Case("xml without document", ("xml",)), Case("xml disk without target", ("xml", "disk", "--image", "rbd/x")),
    Case("xml disk bad bus", ("xml", "disk", "--image", "rbd/x", "--target", "vda", "--bus", "floppy")),
    Case("xml disk bad iotune", ("xml", "disk", "--image", "rbd/x", "--target", "vda", "--iotune", "fast")),
    Case("xml disk bad target", ("xml", "disk", "--image", "rbd/x", "--target", "c:")),
    Case("xml disk ephemeral alone", ("xml", "disk", "--image", "rbd/x", "--target", "vda", "--ephemeral")),
    Case("xml disk clone-of without snapshot", ("xml", "disk", "--image", "rbd/x", "--target", "vda", "--clone-of", "rbd/g")),
    Case("xml pool empty monitors", ("xml", "pool", "--monitors", ",")),
    Case("xml pool port out of range", ("xml", "pool", "--monitors", "10.0.0.1:99999")),
    Case("xml pool bad ipv6", ("xml", "pool", "--monitors", "[2001:db8::1")),
    Case("xml volume snapshot", ("xml", "volume", "--image", "rbd/x@s", "--size", "1G")),
    Case("xml disk domain without define", ("xml", "disk", "--image", "rbd/x", "--target", "vda", "--domain", "d")),
    Case("hook unknown action", ("hook", "reinstall")),
]

# --- image specs, through several commands ------------------------------------------------------------
for index, spec in enumerate(SPECS):
    command = [("create", spec, "--size", "1M"), ("snap", "create", spec), ("info", spec), ("rm", spec),
               ("clone", "rbd/gold@s", spec), ("children", spec), ("flatten", spec)][index % 7]
    CASES.append(Case(f"spec {spec!r} to {command[0]}", tuple(command), codes=(2,), words="invalid"))
CASES += [
    Case("snapshot where an image is needed", ("info", "rbd/img@snap"), codes=(2,), words="not a snapshot"),
    Case("image where a snapshot is needed", ("snap", "protect", "rbd/img"), codes=(2,), words="snapshot is needed"),
    Case("clone from an image", ("clone", "rbd/img", "rbd/c"), codes=(2,), words="snapshot is needed"),
    Case("backup of an image", ("backup", "rbd/img", "/tmp"), codes=(2,), words="snapshot is needed"),
    Case("xml disk bad image", ("xml", "disk", "--image", "rbd/../x", "--target", "vda"), codes=(2,)),
    Case("missing pool", ("ls", "nopool"), codes=(1,), words="pool nopool: does not exist"),
    Case("missing image", ("info", "rbd/no-such-image"), codes=(1,), words="does not exist"),
    Case("missing snapshot", ("snap", "rm", "rbd/no-such-image@s"), codes=(1,), words="does not exist"),
    Case("clone of a missing snapshot", ("clone", "rbd/no-such-image@s", "rbd/c-of-nothing"), codes=(1,)),
    Case("resize a missing image", ("resize", "rbd/no-such-image", "--size", "1G"), codes=(1,)),
]

# --- config files ---------------------------------------------------------------------------------------
CONFIGS = {
    "empty": "", "binary": "\x00\x01\x02 not ini \xff", "no section": "monitors = 127.0.0.1\n",
    "unknown section": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[cephx]\n",
    "unknown key": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\nmonitor = x\n",
    "no monitors": "[ceph]\nkeyring = {keyring}\n", "empty monitors": "[ceph]\nmonitors =\nkeyring = {keyring}\n",
    "bad port": "[ceph]\nmonitors = 127.0.0.1:0\nkeyring = {keyring}\n",
    "bad timeout": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\nclient_mount_timeout = soon\n",
    "zero timeout": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\nrados_osd_op_timeout = 0\n",
    "huge timeout": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\nrados_mon_op_timeout = 99999\n",
    "bad pool": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\npool = a/b\n",
    "bad client": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\nclient_id = a b\n",
    "duplicate key": "[ceph]\nmonitors = 127.0.0.1\nmonitors = 127.0.0.2\nkeyring = {keyring}\n",
    "duplicate section": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[ceph]\n",
    "no credentials": "[ceph]\nmonitors = 127.0.0.1\n",
    "bad uuid": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[libvirt]\nsecret_uuid = 1234\n",
    "bad uri": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[libvirt]\nuri = localhost\n",
    "bad clone format": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[layering]\nclone_format = 3\n",
    "bad depth": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[layering]\nmax_clone_depth = -1\n",
    "bad hook log": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[hook]\nlog = somewhere\n",
    "bad recipient": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[backup]\nrecipients = age1nope\n",
    "identity as recipient": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[backup]\nrecipients = "
                             "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX\n",
    "bad signer": "[ceph]\nmonitors = 127.0.0.1\nkeyring = {keyring}\n[backup]\nsigners = virtrbd-signer1nope\n",
    "missing keyring": "[ceph]\nmonitors = {monitor}\nkeyring = /nonexistent/keyring\n",
    "world-readable keyring": "[ceph]\nmonitors = {monitor}\nclient_id = virt\nkeyring = {open_keyring}\n",
    "keyring of another user": "[ceph]\nmonitors = {monitor}\nclient_id = nobody\nkeyring = {keyring}\n",
    "wrong key": "[ceph]\nmonitors = {monitor}\nclient_id = virt\nkeyring = {wrong_keyring}\nclient_mount_timeout = 2\n",
    "unreachable monitor": "[ceph]\nmonitors = 127.0.0.1:9\nkeyring = {keyring}\nclient_mount_timeout = 2\n",
    "unresolvable monitor": "[ceph]\nmonitors = no-such-host.invalid\nkeyring = {keyring}\n",
}
CASES += [Case(f"config: {name}", ("ls",), config=name, words="" if "monitor" in name or "key" in name else "[")
          for name in CONFIGS]
CASES += [Case("config: missing file", ("ls",), config="absent", codes=(2,), words="not found"),
          Case("config: a directory", ("ls",), config="directory", codes=(2,), words="directory")]

# --- the hook: argv and stdin ---------------------------------------------------------------------------
MARK = b'<metadata><v:clones xmlns:v="urn:x-virtrbd:domain:1"><v:disk target="vda" clone-of="rbd/g@s"/></v:clones></metadata>'
CASES += [
    Case("hook: not XML", hook="prepare", stdin=b"urn:x-virtrbd:domain:1 is not XML <", words="not well-formed"),
    Case("hook: external entity", hook="prepare", words="DOCTYPE",
         stdin=b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]><domain>&x;urn:x-virtrbd:domain:1</domain>'),
    Case("hook: entity expansion", hook="prepare", words="DOCTYPE",
         stdin=b'<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
               b'<domain>&b;urn:x-virtrbd:domain:1</domain>'),
    Case("hook: 100 MB of input", hook="prepare", words="larger than",
         stdin=b"<domain>urn:x-virtrbd:domain:1" + b" " * (100 << 20) + b"</domain>"),
    Case("hook: not a domain", hook="prepare", stdin=b"<pool>urn:x-virtrbd:domain:1</pool>", words="<domain>"),
    Case("hook: domain without uuid", hook="prepare", stdin=b"<domain>" + MARK + b"</domain>", words="no <uuid>"),
    Case("hook: markup for a disk it lacks", hook="prepare", words="not an rbd disk",
         stdin=b"<domain><uuid>0f06ada2-0539-4a99-88fc-a7470d4c39cc</uuid>" + MARK + b"</domain>"),
    Case("hook: markup without snapshot", hook="prepare", words="names no snapshot",
         stdin=MARK.replace(b"rbd/g@s", b"rbd/g").join([b"<domain><uuid>u</uuid>", b"</domain>"])),
    Case("hook: markup with bad spec", hook="prepare", words="invalid image spec",
         stdin=MARK.replace(b"rbd/g@s", b"rbd/../g@s").join([b"<domain><uuid>u</uuid>", b"</domain>"])),
    Case("hook: markup with bad ephemeral", hook="prepare", words="not yes or no",
         stdin=MARK.replace(b'target="vda"', b'target="vda" ephemeral="often"').join(
             [b"<domain><uuid>u</uuid>", b"</domain>"])),
    Case("hook: markup with bad size", hook="prepare", words="number of bytes",
         stdin=MARK.replace(b'target="vda"', b'target="vda" size="big"').join(
             [b"<domain><uuid>u</uuid>", b"</domain>"])),
    Case("hook: golden snapshot missing", hook="prepare", words="does not exist", stdin=None),
    # release never stops anything: the message is given, the exit code stays 0 (libvirt ignores it anyway)
    Case("hook release: not XML", hook="release", stdin=b"urn:x-virtrbd:domain:1 <", codes=(0,),
         words="not well-formed"),
    Case("hook release: 100 MB", hook="release", codes=(0,), words="larger than",
         stdin=b"<domain>urn:x-virtrbd:domain:1" + b" " * (100 << 20) + b"</domain>"),
]

# --- backup files ----------------------------------------------------------------------------------------
BACKUP_CASES = ["truncated raw", "truncated qcow2", "qcow2 bad magic", "qcow2 header garbage",
                "corrupt manifest json", "manifest of another file", "manifest wrong checksum",
                "manifest wrong size", "data without manifest", "diff for another image", "diff truncated",
                "diff garbage", "not a backup", "empty file"]
CASES += [Case(f"restore: {name}", ("restore", name, "rbd/restore-must-not-exist"), codes=(1, 2))
          for name in BACKUP_CASES]
CASES += [Case(f"verify: {name}", ("verify", name), codes=(1, 2)) for name in BACKUP_CASES[:8]]


# --- the corpus' world ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(lab, storage_module, tmp_path_factory):
    """Config files, keyrings, a golden image and damaged backup files for the cases to point at."""
    root = tmp_path_factory.mktemp("corpus")
    key = lab.key.reveal()
    wrong = _write(root / "wrong.keyring", KEYRING_TEXT.format(key="AQBKpEZnAAAAABAAgV2bCDk7cO2VXy3SEf30lA=="))
    open_keyring = root / "open.keyring"
    open_keyring.write_text(KEYRING_TEXT.format(key=key))
    open_keyring.chmod(0o644)
    fields = dict(keyring=lab.config.ceph.keyring, monitor=lab.config.ceph.monitors[0], wrong_keyring=wrong,
                  open_keyring=open_keyring)
    for name, text in CONFIGS.items():
        (root / f"{name}.conf").write_text(text.format(**fields))
    (root / "directory.conf").mkdir()
    backups = _damaged_backups(storage_module, root / "backups")
    script = root / "hook"
    script.write_text(hook_install.render(lab.conf_path))
    script.chmod(0o755)
    return root, backups, script


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _damaged_backups(storage, folder: Path) -> dict[str, Path]:
    """A good RAW, QCOW2 and incremental backup, then one damaged copy per case, each in its own folder."""
    folder.mkdir()
    good = folder / "good"
    good.mkdir()
    image = "corpus-src"
    if storage.image_exists(image):
        storage.remove_image(image, with_snapshots=True)
    storage.create_image(image, 9 << 20)
    with storage.cluster.image("rbd", image) as img:
        img.write(os.urandom(1 << 20), 0)
    storage.create_snapshot(f"{image}@one")
    with storage.cluster.image("rbd", image) as img:
        img.write(os.urandom(4096), 5 << 20)
    storage.create_snapshot(f"{image}@two")
    other = "corpus-other"
    if storage.image_exists(other):
        storage.remove_image(other, with_snapshots=True)
    storage.create_image(other, 9 << 20)
    storage.create_snapshot(f"{other}@one")
    storage.create_snapshot(f"{other}@two")
    for args in ((f"{image}@one", "--format", "raw"), (f"{image}@one", "--format", "qcow2"),
                 (f"{image}@two", "--since", f"{image}@one"), (f"{other}@one",), (f"{other}@two", "--since",
                                                                                   f"{other}@one")):
        result = virtrbd("--config", str(storage.config.path), "backup", args[0], str(good), *args[1:])
        assert result.code == 0, result.err
    files = {p.suffix: p for p in good.iterdir() if not p.name.endswith(".json") and image in p.name}
    raw, qcow2, diff = files[".raw"], files[".qcow2"], files[".rbddiff"]
    other_diff = next(p for p in good.iterdir() if p.name.endswith(".rbddiff") and other in p.name)

    def copy(name: str, *sources: Path) -> Path:
        case = folder / name.replace(" ", "-")
        case.mkdir()
        for source in sources:
            for path in (source, source.with_name(source.name + ".manifest.json")):
                if path.exists():
                    shutil.copy2(path, case / path.name)
        return case / sources[-1].name

    made = {}
    made["truncated raw"] = copy("truncated raw", raw)
    os.truncate(made["truncated raw"], raw.stat().st_size // 2)
    made["truncated qcow2"] = copy("truncated qcow2", qcow2)
    os.truncate(made["truncated qcow2"], qcow2.stat().st_size - 4096)
    made["qcow2 bad magic"] = copy("qcow2 bad magic", qcow2)
    _poke(made["qcow2 bad magic"], 0, b"QFI\xfa")
    made["qcow2 header garbage"] = copy("qcow2 header garbage", qcow2)
    _poke(made["qcow2 header garbage"], 8, os.urandom(64))
    made["corrupt manifest json"] = copy("corrupt manifest json", raw)
    _manifest(made["corrupt manifest json"]).write_text("{not json")
    made["manifest of another file"] = copy("manifest of another file", raw)
    _edit_manifest(made["manifest of another file"], file="rbd~other~snap.raw")
    made["manifest wrong checksum"] = copy("manifest wrong checksum", raw)       # damaged: the seal tells
    _edit_manifest(made["manifest wrong checksum"], checksum=lambda c: {**c, "value": "0" * 32})
    made["manifest wrong size"] = copy("manifest wrong size", raw)
    _edit_manifest(made["manifest wrong size"], file_size=lambda s: s + 1)
    made["data without manifest"] = copy("data without manifest", raw)
    _manifest(made["data without manifest"]).unlink()
    made["diff for another image"] = copy("diff for another image", raw, other_diff)
    made["diff truncated"] = copy("diff truncated", raw, diff)
    os.truncate(made["diff truncated"], diff.stat().st_size - 100)
    made["diff garbage"] = copy("diff garbage", raw, diff)
    _poke(made["diff garbage"], 0, b"not an rbd diff\n")
    made["not a backup"] = folder / "not-a-backup.raw"
    made["not a backup"].write_bytes(os.urandom(8192))
    made["empty file"] = folder / "empty.qcow2"
    made["empty file"].write_bytes(b"")
    return made


def _manifest(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _edit_manifest(path: Path, **changes) -> None:
    manifest = _manifest(path)
    data = json.loads(manifest.read_text())
    for key, change in changes.items():
        data[key] = change(data[key]) if callable(change) else change
    manifest.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def storage_module(lab):
    from virtrbd import Storage
    with Storage(lab.config) as storage:
        yield storage


@pytest.fixture(scope="module")
def untouched(corpus, storage_module):
    """The state of the pool and of every corpus file, before the cases; compared once they ran."""
    root = corpus[0]
    before = _state(storage_module, root)
    yield
    after = _state(storage_module, root)
    assert after == before, "the bad inputs changed the pool or a file"


def _state(storage, root: Path) -> dict:
    images = {name: [s.name for s in storage.list_snapshots(name)] for name in storage.list_images()
              if not name.startswith("t-")}
    files = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    return {"images": images, "files": files}


# --- the cases ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case, corpus, lab, untouched):
    root, backups, script = corpus
    if case.hook:
        code, err = _hook(script, case, lab)
        out = ""
    else:
        args = [_backup_arg(a, backups) for a in case.args]
        if case.config is not None:
            args = ["--config", str(root / f"{case.config}.conf"), *args]
        result = virtrbd(*args, env=lab.env, timeout=60)
        code, err, out = result.code, result.err, result.out
    lines = [line for line in err.splitlines() if line.strip()]
    clean = (code in case.codes and len(lines) == 1 and lines[0].startswith("virtrbd:")
             and "Traceback" not in err and case.words in err and lab.key.reveal() not in err + out)
    LEDGER.bad_input(case.name, clean)
    assert code in case.codes, f"exit {code}: {err}"
    assert len(lines) == 1 and lines[0].startswith("virtrbd:"), err
    assert case.words in err, err


def _backup_arg(arg: str, backups: dict[str, Path]) -> str:
    return str(backups[arg]) if arg in backups else arg


def _hook(script: Path, case: Case, lab) -> tuple[int, str]:
    stdin = case.stdin
    if stdin is None:      # a well-formed domain whose golden snapshot does not exist
        stdin = domain_xml(lab.config, "vm", "rbd/corpus-vm", clone_of="rbd/corpus-src@no-such-snapshot").encode()
    done = subprocess.run([str(script), "vm", case.hook, "begin" if case.hook == "prepare" else "end", "-"],
                          input=stdin, capture_output=True, env={"LC_ALL": "C", "HOME": "/root", "PATH": "/usr/bin:/bin"},
                          timeout=60)
    return done.returncode, done.stderr.decode(errors="replace")


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 100
