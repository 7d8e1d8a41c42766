"""A small blocking client for Envoy's admin API (loopback HTTP, stdlib only).

Each call opens its own connection, so an `EnvoyAdmin` is thread-safe; calls
are bounded by `timeout` and raise OSError (incl. URLError) on transport errors.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def read_admin_address(path: Path) -> tuple[str, int] | None:
    """Parse the file Envoy writes for --admin-address-path ("host:port"); None until complete."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class EnvoyAdmin:
    host: str
    port: int
    timeout: float = 2.0

    def _url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def _request(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(self._url(path), method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def ready(self) -> bool:
        """True once Envoy is initialized (admin /ready answers 200 "LIVE")."""
        status, _ = self._request("/ready")
        return status == 200

    def listener_port(self, name: str) -> int:
        """The bound port of listener `name` (useful when it was configured with port 0)."""
        status, body = self._request("/listeners?format=json")
        if status != 200:
            raise OSError(f"admin /listeners answered {status}: {body[:200]}")
        for entry in json.loads(body).get("listener_statuses", []):
            if entry.get("name") == name:
                return int(entry["local_address"]["socket_address"]["port_value"])
        raise OSError(f"Envoy has no listener named {name!r}")

    def optional_listener_port(self, name: str) -> int | None:
        """The bound port of listener `name`, or None when Envoy has no such listener."""
        try:
            return self.listener_port(name)
        except OSError as e:
            if "has no listener named" in str(e):
                return None
            raise

    def drain_listeners(self) -> None:
        """Start a graceful drain (GOAWAY / Connection: close) without exiting; the caller terminates."""
        status, body = self._request("/drain_listeners?graceful&skip_exit", method="POST")
        if status != 200:
            raise OSError(f"admin /drain_listeners answered {status}: {body[:200]}")

    def gauge(self, name: str) -> int | None:
        """The value of one stat (counter or gauge), or None if Envoy has no such stat."""
        pattern = urllib.parse.quote("^" + re.escape(name) + "$")
        status, body = self._request(f"/stats?filter={pattern}")
        if status != 200:
            raise OSError(f"admin /stats answered {status}: {body[:200]}")
        for line in body.splitlines():
            key, _, value = line.partition(": ")
            if key == name and value.strip().isdigit():
                return int(value)
        return None
