"""Standard-library HTTP and gRPC helpers shared by the gateway tests."""

from __future__ import annotations

import http.client as httplib
import json
from dataclasses import dataclass
from typing import Any

import grpc
from mlmesh.channels import sync_channel
from mlmesh.serving.v1 import serving_pb2_grpc


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    port: int,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One HTTP/1.1 request to 127.0.0.1:port (its own connection)."""
    hdrs = dict(headers or {})
    data: bytes | None
    if isinstance(body, dict):
        data = json.dumps(body).encode()
        hdrs.setdefault("content-type", "application/json")
    else:
        data = body
    conn = httplib.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def serving_stub(addr: str) -> tuple[grpc.Channel, serving_pb2_grpc.ServingServiceStub]:
    channel = sync_channel(addr)
    return channel, serving_pb2_grpc.ServingServiceStub(channel)


def header(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v
    return None
