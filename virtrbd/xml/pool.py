"""The libvirt storage pool of type rbd: a Ceph pool seen through libvirt."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from ..errors import InvalidXMLError
from ..monitor import Monitor
from . import nodes, safe, templates
from .common import SecretRef, check_uuid, fill_host, read_hosts

RBD_NS = "http://libvirt.org/schemas/storagepool/rbd/1.0"
_OPTS = f"{{{RBD_NS}}}config_opts"
_OPT = f"{{{RBD_NS}}}option"


@dataclass(frozen=True)
class PoolDef:
    name: str                               # the libvirt pool's name
    source_name: str                        # the Ceph pool
    monitors: tuple[Monitor, ...]
    auth_username: str | None = None        # cephx user without 'client.'
    secret: SecretRef | None = None
    uuid: str | None = None
    config_opts: tuple[tuple[str, str], ...] = ()   # librados options, e.g. client_mount_timeout
    #: the document this was read from: rendering fills the typed fields into a copy of it instead of the
    #: template, so that what virtrbd does not model (and what the input lacked) stays as it was
    origin: etree._Element | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.monitors:
            raise ValueError("a pool needs at least one monitor")
        if (self.auth_username is None) != (self.secret is None):
            raise ValueError("auth needs both a username and a secret")
        object.__setattr__(self, "monitors", tuple(self.monitors))
        object.__setattr__(self, "config_opts", tuple((str(k), str(v)) for k, v in self.config_opts))
        object.__setattr__(self, "uuid", check_uuid(self.uuid))

    def to_element(self, template_dir: Path | None = None) -> etree._Element:
        root, complete = templates.starting_point("pool", self, template_dir)
        if complete:
            return root
        nodes.put_attr(root, ".", "type", "rbd")
        nodes.put_text(root, "name", self.name)
        nodes.put_text(root, "uuid", self.uuid)
        nodes.put_text(root, "source/name", self.source_name)
        nodes.repeat(root, "source/host", self.monitors, fill_host)
        if self.secret is None:
            nodes.remove(root, "source/auth")
        else:
            nodes.put_attr(root, "source/auth", "type", "ceph")
            nodes.put_attr(root, "source/auth", "username", self.auth_username)
            self.secret.fill(nodes.ensure(root, "source/auth/secret"))
        nodes.repeat(root, f"{_OPTS}/{_OPT}", self.config_opts, _fill_option)
        nodes.remove_if_empty(root, _OPTS)
        return root

    def to_xml(self, template_dir: Path | None = None) -> str:
        return safe.tostring(self.to_element(template_dir))

    @classmethod
    def from_element(cls, root: etree._Element) -> PoolDef:
        if root.tag != "pool" or root.get("type") != "rbd":
            raise InvalidXMLError("expected a <pool type='rbd'> document")
        source = root.find("source")
        if source is None:
            raise InvalidXMLError("pool: missing <source>")
        auth = source.find("auth")
        secret = None
        if auth is not None:
            secret_node = auth.find("secret")
            if secret_node is None:
                raise InvalidXMLError("pool: <auth> without <secret>")
            secret = SecretRef.read(secret_node, "pool")
        options = tuple((o.get("name") or "", o.get("value") or "") for o in root.findall(f"{_OPTS}/{_OPT}"))
        try:
            return cls(name=nodes.text(root, "name") or "", source_name=nodes.text(source, "name") or "",
                       monitors=read_hosts(source, "pool"),
                       auth_username=None if auth is None else auth.get("username"), secret=secret,
                       uuid=nodes.text(root, "uuid"), config_opts=options, origin=copy.deepcopy(root))
        except ValueError as exc:
            raise InvalidXMLError(f"pool: {exc}") from None

    @classmethod
    def from_xml(cls, text: str | bytes) -> PoolDef:
        return cls.from_element(safe.parse(text, what="pool XML"))


def _fill_option(node: etree._Element, option: tuple[str, str]) -> None:
    node.set("name", option[0])
    node.set("value", option[1])
