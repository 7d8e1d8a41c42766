"""Backend addresses: parsing and validation of `host:port` lists.

Pure functions; raise ValueError with the offending entry and what was expected
(settings turn that into a message naming the setting).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Backend:
    """One upstream replica. `host` is an IP literal or a DNS name."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _valid_hostname(host: str) -> bool:
    return len(host) <= 253 and all(_LABEL.match(label) for label in host.rstrip(".").split("."))


def parse_backend(entry: str) -> Backend:
    """Parse `host:port` or `[ipv6]:port`."""
    text = entry.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"backend {entry!r} is not [ipv6]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"backend {entry!r} has an invalid IPv6 address {host!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"backend {entry!r} is not host:port")
        if ":" in host:
            raise ValueError(f"backend {entry!r}: write IPv6 addresses as [addr]:port")
        if not _valid_hostname(host):
            raise ValueError(f"backend {entry!r} has an invalid host {host!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"backend {entry!r} has port {port_text!r}; expected an integer in 1..65535")
    return Backend(host, int(port_text))


def parse_backends(text: str) -> list[Backend]:
    """Parse a comma-separated list; at least one entry, no duplicates, order kept."""
    entries = [e for e in (part.strip() for part in text.split(",")) if e]
    if not entries:
        raise ValueError("no backends given; expected a comma-separated list of host:port (at least one)")
    backends = [parse_backend(e) for e in entries]
    seen: set[Backend] = set()
    for b in backends:
        if b in seen:
            raise ValueError(f"backend {b} is listed twice")
        seen.add(b)
    return backends
