"""A FAKE Consul agent for the tests: the few documented HTTP endpoints mlmesh uses, nothing else.

No Consul agent can be installed on our machines (not packaged; releases since
1.17 are not open source), so `mlmesh.discovery.consul` is tested against this.
It implements, after Consul's documentation:

- `PUT /v1/agent/service/register` — https://developer.hashicorp.com/consul/api-docs/agent/service#register-service
  (Name, ID, Address, Port, Meta, Check/Checks with GRPC, Interval, Timeout,
  DeregisterCriticalServiceAfter; keys are case-insensitive, as Consul decodes them);
- `PUT /v1/agent/service/deregister/:service_id` — https://developer.hashicorp.com/consul/api-docs/agent/service#deregister-service
  (404 for an unknown ID);
- `GET /v1/health/service/:service?passing` — https://developer.hashicorp.com/consul/api-docs/health#list-service-instances-for-service
  with blocking queries (`index`, `wait`, `X-Consul-Index`) —
  https://developer.hashicorp.com/consul/api-docs/features/blocking ;
- the agent's own gRPC checks, https://developer.hashicorp.com/consul/docs/services/usage/checks#grpc-checks
  `grpc.health.v1.Health/Check` on `host:port[/service]` every Interval, a new
  check starts critical, and a service critical for longer than
  DeregisterCriticalServiceAfter is deregistered (the real agent reaps about
  every 30 s; this one on every check).

Simplifications: one node ("fake-node", 127.0.0.1); X-Consul-Index is one global
counter bumped on every change (Consul allows wake-ups on unrelated changes);
no ACLs, tags, datacenters or filters. Every other path answers 404.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds of a Go-style duration as Consul takes them ("10s", "500ms", "1m")."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _lower_keys(d: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in d.items()}


@dataclass
class _Service:
    id: str
    name: str
    address: str
    port: int
    meta: dict[str, str]
    grpc_target: str | None
    interval: float
    timeout: float
    deregister_after: float | None
    status: str = "critical"  # Consul starts a check critical until it first passes
    critical_since: float = field(default_factory=time.monotonic)
    output: str = ""
    stop: threading.Event = field(default_factory=threading.Event)


class ConsulAgentFake:
    """Serve on 127.0.0.1:<ephemeral>; `start()`, `stop()`, `addr`."""

    def __init__(self) -> None:
        self._services: dict[str, _Service] = {}
        self._index = 1
        self._closed = False
        self._changed = threading.Condition()
        self.requests: list[str] = []  # "METHOD path?query", for the tests to inspect
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if code == 200 else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                fake.requests.append(f"PUT {self.path}")
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if url.path == "/v1/agent/service/register":
                    try:
                        fake.register(json.loads(body or b"{}"))
                    except (ValueError, KeyError, TypeError) as e:
                        return self._reply(400, f"Request decode failed: {e}")
                    return self._reply(200, "")
                if url.path.startswith("/v1/agent/service/deregister/"):
                    sid = url.path.removeprefix("/v1/agent/service/deregister/")
                    if not fake.deregister(sid):
                        return self._reply(404, f'Unknown service ID "{sid}"')
                    return self._reply(200, "")
                return self._reply(404, "not implemented by the fake agent")

            def do_GET(self) -> None:
                fake.requests.append(f"GET {self.path}")
                url = urlsplit(self.path)
                if not url.path.startswith("/v1/health/service/"):
                    return self._reply(404, "not implemented by the fake agent")
                q = parse_qs(url.query, keep_blank_values=True)
                passing = "passing" in q and q["passing"][0].lower() not in ("false", "0")
                try:
                    index = int(q["index"][0]) if "index" in q else 0
                    wait = min(duration(q["wait"][0]), 600.0) if "wait" in q else 300.0
                except ValueError as e:
                    return self._reply(400, str(e))
                name = url.path.removeprefix("/v1/health/service/")
                current, entries = fake.health(name, passing, index, wait)
                return self._reply(200, entries, {"X-Consul-Index": str(current)})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def addr(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ConsulAgentFake:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._closed = True
            for svc in self._services.values():
                svc.stop.set()
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # --- state ------------------------------------------------------------

    def _bump(self) -> None:
        self._index += 1
        self._changed.notify_all()

    def register(self, body: dict[str, Any]) -> None:
        b = _lower_keys(body)
        name = b["name"]
        checks = [_lower_keys(c) for c in (b.get("checks") or ([b["check"]] if b.get("check") else []))]
        grpc_check = next((c for c in checks if c.get("grpc")), None)
        if grpc_check is not None and "interval" not in grpc_check:
            raise ValueError("Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or gRPC checks")
        dereg = grpc_check.get("deregistercriticalserviceafter") if grpc_check else None
        svc = _Service(
            id=b.get("id") or name,
            name=name,
            address=b.get("address") or "",
            port=int(b.get("port") or 0),
            meta={str(k): str(v) for k, v in (b.get("meta") or {}).items()},
            grpc_target=grpc_check["grpc"] if grpc_check else None,
            interval=duration(grpc_check["interval"]) if grpc_check else 0.0,
            timeout=duration(grpc_check.get("timeout") or "10s") if grpc_check else 0.0,
            deregister_after=duration(dereg) if dereg else None,
            status="critical" if grpc_check else "passing",
        )
        with self._changed:
            old = self._services.pop(svc.id, None)
            if old is not None:
                old.stop.set()
            self._services[svc.id] = svc
            self._bump()
        if svc.grpc_target:
            threading.Thread(target=self._run_check, args=(svc,), daemon=True).start()

    def deregister(self, service_id: str) -> bool:
        with self._changed:
            svc = self._services.pop(service_id, None)
            if svc is None:
                return False
            svc.stop.set()
            self._bump()
            return True

    def _run_check(self, svc: _Service) -> None:
        assert svc.grpc_target is not None
        target, _, health_service = svc.grpc_target.partition("/")
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not svc.stop.is_set():
                try:
                    resp = stub.Check(
                        health_pb2.HealthCheckRequest(service=health_service), timeout=svc.timeout
                    )
                    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
                    status, output = ("passing" if serving else "critical"), f"status: {resp.status}"
                except grpc.RpcError as e:
                    status, output = "critical", f"rpc error: {e.code()}"  # type: ignore[attr-defined]
                with self._changed:
                    if svc.stop.is_set():
                        return
                    if status != svc.status:
                        svc.status, svc.output = status, output
                        svc.critical_since = time.monotonic()
                        self._bump()
                    if (
                        status == "critical"
                        and svc.deregister_after is not None
                        and time.monotonic() - svc.critical_since > svc.deregister_after
                    ):
                        self._services.pop(svc.id, None)
                        self._bump()
                        return
                svc.stop.wait(svc.interval)

    def health(self, name: str, passing: bool, index: int, wait: float) -> tuple[int, list[dict[str, Any]]]:
        """The entries for `name`; blocks while `index` is current, up to `wait` seconds."""
        deadline = time.monotonic() + wait
        with self._changed:
            while index and index >= self._index and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            entries = [
                self._entry(s)
                for s in self._services.values()
                if s.name == name and (not passing or s.status == "passing")
            ]
            return self._index, entries

    def _entry(self, s: _Service) -> dict[str, Any]:
        checks = [{"Node": "fake-node", "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""}]
        if s.grpc_target:
            checks.append(
                {
                    "Node": "fake-node",
                    "CheckID": f"service:{s.id}",
                    "Name": f"Service '{s.name}' check",
                    "Status": s.status,
                    "Output": s.output,
                    "ServiceID": s.id,
                    "ServiceName": s.name,
                    "Type": "grpc",
                }
            )
        return {
            "Node": {"Node": "fake-node", "Address": "127.0.0.1"},
            "Service": {"ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port, "Meta": s.meta},
            "Checks": checks,
        }
