"""Ceph monitor addresses: ``host[:port]`` by name, IPv4 or IPv6.

One value type shared by the config, the connection and the XML layer, so the
three always agree on how a monitor is written: ``mon.example.org:3300``,
``192.0.2.1``, ``[2001:db8::1]:3300`` (brackets required with a port).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


@dataclass(frozen=True, order=True)
class Monitor:
    """One monitor: a host (name or literal address) and an optional port."""

    host: str
    port: int | None = None

    def __post_init__(self) -> None:
        if not _valid_host(self.host):
            raise ValueError(f"{self.host!r} is not a host name or IP address")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range (1-65535)")

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @property
    def ports(self) -> tuple[int, ...]:
        """The ports it answers on: its own, or without one Ceph's defaults (msgr v2 3300, then v1 6789)."""
        return (self.port,) if self.port else (3300, 6789)

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Monitor:
        """Parse ``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
        text = text.strip()
        if not text:
            raise ValueError("empty monitor address")
        port_text = None
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep:
                raise ValueError(f"{text!r}: missing ']'")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{text!r}: expected ':PORT' after ']'")
                port_text = rest[1:]
            if ":" not in host:
                raise ValueError(f"{text!r}: brackets are for IPv6 addresses")
        elif text.count(":") > 1:
            host = text  # a bare IPv6 address cannot carry a port
        else:
            host, sep, port_text = text.partition(":")
            if not sep:
                port_text = None
        port = None
        if port_text is not None:
            if not port_text.isdigit():
                raise ValueError(f"{text!r}: port {port_text!r} is not a number")
            port = int(port_text)
        return cls(host, port)


def _valid_host(host: str) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if ":" in host:
        return False
    if re.fullmatch(r"[0-9.]+", host):  # looks numeric but is not a valid IPv4
        return False
    return bool(_HOSTNAME.match(host))


def parse_monitors(text: str) -> tuple[Monitor, ...]:
    """A comma- or space-separated list of monitors, at least one, no duplicates."""
    items = [item for item in re.split(r"[,\s]+", text.strip()) if item]
    if not items:
        raise ValueError("no monitor given")
    monitors = tuple(Monitor.parse(item) for item in items)
    if len(set(monitors)) != len(monitors):
        raise ValueError("a monitor is listed twice")
    return monitors


def mon_host(monitors: tuple[Monitor, ...] | list[Monitor]) -> str:
    """The ``mon_host`` value librados takes for these monitors."""
    return ",".join(str(m) for m in monitors)
