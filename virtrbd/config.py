"""virtrbd.conf: one INI file read by the library, the CLI and the hook.

Every setting is declared once below, as a dataclass field with its parser,
default and help text (in the spirit of Cinder's declared options), so that an
unknown key, a missing one or a bad value is reported in one line naming the
file, the section and the key::

    /etc/virtrbd/virtrbd.conf: [ceph] monitors: port 70000 out of range (1-65535)

The file is found from ``--config``, else ``$VIRTRBD_CONF``, else
``/etc/virtrbd/virtrbd.conf``.  It holds no secret itself: the cephx key stays
in the keyring file it names (see ``virtrbd.keyring``).
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bech32
from .errors import ConfigError
from .monitor import Monitor, parse_monitors
from .spec import is_valid_name

DEFAULT_PATH = Path("/etc/virtrbd/virtrbd.conf")
ENV_VAR = "VIRTRBD_CONF"

def option(parse: Callable[[str], Any], help: str, default: Any = dataclasses.MISSING) -> Any:
    """Declare one setting: how to parse it, what it means, and its default."""
    return field(default=default, metadata={"parse": parse, "help": help})


# --- value parsers: each raises ValueError with a message fit for the user ---

def ceph_name(text: str) -> str:
    """A pool, cephx user or libvirt object name: no '/', '@', spaces or control characters."""
    text = text.strip()
    if not is_valid_name(text):
        raise ValueError(f"{text!r} is not a valid name (letters, digits, '.', '_', '+', '-', not starting "
                         f"with '.' or '-')")
    return text


def seconds(text: str) -> int:
    """Whole seconds: Ceph's *_timeout options take no fractions."""
    text = text.strip()
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number of seconds")
    value = int(text)
    if not 1 <= value <= 3600:
        raise ValueError(f"{value} s is out of range (1-3600)")
    return value


def positive_int(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def clone_format(text: str) -> str:
    text = text.strip().lower()
    if text not in ("auto", "1", "2"):
        raise ValueError(f"{text!r} is not a clone format (auto, 1 or 2)")
    return text


_UUID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)


def secret_uuid(text: str) -> str:
    """A UUID in its canonical lower-case dashed form (checked without the uuid module: the hook imports this)."""
    digits = text.strip().replace("-", "").lower()
    if not _UUID.match(text.strip()) or len(digits) != 32:
        raise ValueError(f"{text!r} is not a UUID")
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def libvirt_uri(text: str) -> str:
    text = text.strip()
    if not re.match(r"^[a-z][a-z0-9+]*://", text):
        raise ValueError(f"{text!r} is not a libvirt URI (e.g. qemu:///system)")
    return text


def a_path(text: str) -> Path:
    text = text.strip()
    if not text:
        raise ValueError("empty path")
    return Path(text)


# --- the sections ------------------------------------------------------------------

@dataclass(frozen=True)
class CephSettings:
    """[ceph]: how to reach the cluster from this hypervisor."""

    monitors: tuple[Monitor, ...] = option(
        parse_monitors, "Monitors as host[:port], comma-separated; IPv6 as [addr]:port.")
    client_id: str = option(ceph_name, "cephx user without the 'client.' prefix.", "admin")
    keyring: Path | None = option(
        a_path, "Root-only keyring holding the user's key (or set [libvirt] secret_uuid).", None)
    pool: str = option(ceph_name, "Default pool for image specs that name none.", "rbd")
    client_mount_timeout: int = option(seconds, "Seconds to reach a monitor and authenticate.", 10)
    rados_mon_op_timeout: int = option(seconds, "Seconds for a monitor operation.", 10)
    rados_osd_op_timeout: int = option(seconds, "Seconds for an OSD operation.", 10)

    @property
    def entity(self) -> str:
        return f"client.{self.client_id}"


@dataclass(frozen=True)
class LibvirtSettings:
    """[libvirt]: the hypervisor side."""

    uri: str = option(libvirt_uri, "libvirt connection URI.", "qemu:///system")
    secret_uuid: str | None = option(
        secret_uuid, "UUID of the libvirt secret (usage type ceph) that holds the key.", None)
    pool: str | None = option(
        ceph_name, "Name of the libvirt storage pool for [ceph] pool (default: the same name).", None)
    qemu_user: str = option(
        ceph_name, "The user QEMU runs as (qemu.conf's user): an instant restore lets it read the backup file "
                   "until the copy is committed.", "libvirt-qemu")


@dataclass(frozen=True)
class LayeringSettings:
    """[layering]: clones and their chains."""

    max_clone_depth: int = option(
        positive_int, "Ancestors a new clone may have before it is flattened (0: always flatten).", 5)
    clone_format: str = option(
        clone_format, "RBD clone format: auto (v2 when the cluster's min compat client allows), 1 or 2.",
        "auto")


@dataclass(frozen=True)
class XmlSettings:
    """[xml]: the libvirt documents virtrbd writes."""

    templates: Path | None = option(
        a_path, "Folder of the operator's own XML templates (secret.xml, pool.xml, volume.xml, disk.xml); "
        "any it lacks come from the shipped set.", None)


def log_target(text: str) -> str:
    text = text.strip()
    if text in ("syslog", "stderr") or text.startswith("/"):
        return text
    raise ValueError(f"{text!r} is not 'syslog', 'stderr' or an absolute file path")


@dataclass(frozen=True)
class HookSettings:
    """[hook]: the qemu hook libvirt runs at domain start and release."""

    log: str = option(log_target, "Where the hook logs: syslog, stderr or an absolute file path.", "syslog")
    timeout: int = option(seconds, "Seconds the hook may take at most; past them it gives up and says so.", 30)


SIGNER_HRP = "virtrbd-signer"


def _public_key(word: str, hrp: str, what: str, exactly: str, private: str, refusal: str) -> bytes:
    """The 32-byte key of a Bech32 public key under ``hrp``; a ValueError saying what is wrong, which never
    echoes a private key (one starting with ``private``: ``refusal`` says why it has no place here)."""
    if word.upper().startswith(private):
        raise ValueError(refusal)
    try:
        found, key = bech32.decode(word)
    except bech32.Bech32Error as exc:
        raise ValueError(f"{word[:70]!r} is not {what}: {exc}") from None
    if found != hrp or len(key) != 32:
        raise ValueError(f"{word[:70]!r} is not {exactly}")
    return key


def _public_keys(text: str, check: Callable[[str], bytes]) -> tuple[str, ...]:
    """Public keys separated by commas or spaces, each checked by ``check``."""
    words = [word for word in re.split(r"[\s,]+", text.strip()) if word]
    for word in words:
        check(word)
    return tuple(word.lower() for word in words)


def age_recipient(word: str) -> bytes:
    """The X25519 key of one public age recipient (``age1…``): an identity has no place on a hypervisor.
    (``backup.sealing.keys`` uses it too.)"""
    return _public_key(word, "age", "an age recipient", "an age X25519 recipient (age1…)", "AGE-SECRET-KEY-",
                       "holds a private identity (AGE-SECRET-KEY-…), where only public recipients (age1…) "
                       "belong: give its recipient ('virtrbd backup-key show FILE'), and make a new identity "
                       "if it was kept on this host")


def age_recipients(text: str) -> tuple[str, ...]:
    """Public age recipients (``age1…``), separated by commas or spaces."""
    return _public_keys(text, age_recipient)


def virtrbd_signer(word: str) -> bytes:
    """The Ed25519 key of one public manifest signer (``virtrbd-signer1…``).
    (``backup.sealing.signing`` uses it too.)"""
    return _public_key(word, SIGNER_HRP, "a virtrbd signer", "a virtrbd signer (virtrbd-signer1…)",
                       "VIRTRBD-SIGNING-KEY-", "holds a private signing key (VIRTRBD-SIGNING-KEY-…), where only "
                       "public signers (virtrbd-signer1…) belong: give its signer ('virtrbd backup-key show FILE')")


def virtrbd_signers(text: str) -> tuple[str, ...]:
    """Public manifest signers (``virtrbd-signer1…``), separated by commas or spaces."""
    return _public_keys(text, virtrbd_signer)


@dataclass(frozen=True)
class BackupSettings:
    """[backup]: backups to secondary storage."""

    recipients: tuple[str, ...] = option(
        age_recipients, "Public age recipients (age1…, printed by 'virtrbd backup-key new'), comma-separated: "
        "every backup is encrypted to each of them; this host can then write backups but never read them.", ())
    signing_key: Path | None = option(
        a_path, "This host's private signing key (a 0600 file from 'virtrbd backup-key new --signing'): every "
        "manifest it writes is signed, so verify and restore can tell its backups from forged ones.", None)
    signers: tuple[str, ...] = option(
        virtrbd_signers, "Public signers (virtrbd-signer1…) whose manifests verify and restore trust, beside "
        "signing_key's own; once any is known, a manifest that is unsigned or signed by another key is refused.",
        ())


SECTIONS: dict[str, type] = {"ceph": CephSettings, "libvirt": LibvirtSettings, "layering": LayeringSettings,
                             "xml": XmlSettings, "hook": HookSettings, "backup": BackupSettings}


@dataclass(frozen=True)
class Config:
    """The whole of virtrbd.conf, parsed and checked."""

    path: Path
    ceph: CephSettings
    libvirt: LibvirtSettings = field(default_factory=LibvirtSettings)
    layering: LayeringSettings = field(default_factory=LayeringSettings)
    xml: XmlSettings = field(default_factory=XmlSettings)
    hook: HookSettings = field(default_factory=HookSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)

    @property
    def libvirt_pool(self) -> str:
        return self.libvirt.pool or self.ceph.pool


def resolve_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--config``, else ``$VIRTRBD_CONF``, else ``/etc/virtrbd/virtrbd.conf``."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_PATH


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and check virtrbd.conf; any problem is one ``ConfigError`` line."""
    path = resolve_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (use --config, set {ENV_VAR}, "
            f"or run 'virtrbd lab up' for a lab)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Config:
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), default_section="\0none")
    try:
        parser.read_string(text, source=str(path))
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"{path}: section [{exc.section}] appears twice (line {exc.lineno})") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"{path}: [{exc.section}] {exc.option}: set twice (line {exc.lineno})") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: a setting before any [section]") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: not an INI file: {exc.message.splitlines()[0]}") from None

    for name in parser.sections():
        if name not in SECTIONS:
            raise ConfigError(f"{path}: [{name}]: unknown section (known: {', '.join(SECTIONS)})")
    values = {name: _section(path, name, cls, parser) for name, cls in SECTIONS.items()}
    config = Config(path=path, **values)
    _check_credentials(config)
    return config


def _section(path: Path, name: str, cls: type, parser: configparser.ConfigParser) -> Any:
    given = dict(parser[name]) if parser.has_section(name) else {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in given.items():
        if key not in fields:
            raise ConfigError(f"{path}: [{name}] {key}: unknown setting (known: {', '.join(fields)})")
        try:
            value = fields[key].metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{path}: [{name}] {key}: {exc}") from None
        if isinstance(value, Path) and not value.is_absolute():
            value = (path.parent / value).resolve()
        kwargs[key] = value
    for key, f in fields.items():
        if key not in kwargs and f.default is dataclasses.MISSING:
            raise ConfigError(f"{path}: [{name}] {key}: missing required setting ({f.metadata['help']})")
    return cls(**kwargs)


def _check_credentials(config: Config) -> None:
    if config.ceph.keyring is None and config.libvirt.secret_uuid is None:
        raise ConfigError(
            f"{config.path}: [ceph] keyring: missing (set it, or [libvirt] secret_uuid, so virtrbd can authenticate)")


def render(sections: dict[str, dict[str, Any]]) -> str:
    """INI text for the given settings, checked against the declarations (used by the lab)."""
    lines = ["# virtrbd.conf — 'virtrbd config' lists every setting"]
    for name, values in sections.items():
        fields = {f.name for f in dataclasses.fields(SECTIONS[name])}
        lines.append(f"\n[{name}]")
        for key, value in values.items():
            if key not in fields:
                raise ValueError(f"[{name}] {key}: unknown setting")
            if isinstance(value, (tuple, list)):
                value = ", ".join(str(v) for v in value)
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def describe() -> str:
    """Every setting with its default and meaning, for ``virtrbd config``."""
    out = []
    for name, cls in SECTIONS.items():
        out.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            default = "required" if f.default is dataclasses.MISSING else f"default {f.default}"
            out.append(f"  {f.name:<22} {f.metadata['help']} ({default})")
    return "\n".join(out)
