"""No backup path loads the ``cryptography`` package: its bindings are some 15 MiB of a process, and the
backup and restore commands are held to 96 MiB in all (bench/bench_backup.py); libcrypto serves the
encrypted and signed paths through ctypes (``sealing.evp``)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys, tempfile, types
import virtrbd.cli.backup_cmd
from virtrbd import backup
from virtrbd.backup import catalog, make, merge, restore, trust, verify
from virtrbd.backup.sealing import plain

assert backup.parse_recipients(()) == ()
assert backup.identities(None) is None
assert backup.signing_key_of(types.SimpleNamespace(signing_key=None)) is None
host = trust.Trust.of(types.SimpleNamespace(signers=(), signing_key=None))
assert host.signers == ()
assert host.authenticate(types.SimpleNamespace(signature=None, path="f")) == "unsigned"
with tempfile.NamedTemporaryFile() as f:
    f.write(b"clear bytes"); f.flush()
    opened = plain.PlainFile(f.name)
    assert opened.pread(5, 6) == b"bytes"
    opened.close()
from virtrbd.backup.sealing import age, keys, signing
key = signing.SigningKey(b"k" * 32)
assert key.signer.verifies(b"m", key.sign(b"m"))
assert keys.Identity.generate().recipient
print(sorted(name for name in sys.modules if name.split(".")[0] in ("cryptography", "bcrypt", "_cffi_backend")))
"""


def test_no_backup_path_loads_the_cryptography_package():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
