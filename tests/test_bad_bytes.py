"""Every RPC of every service, found through reflection, answers bytes that do not parse as
its request message with INVALID_ARGUMENT naming the method, and the service stays SERVING.

One `mlmesh up` suite (ingest, a shard, the coordinator, a worker, a serving replica and the
gateway); the gateway's gRPC port is probed with the serving replica's methods, so the
answer is the replica's, through Envoy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from e2e_util import mlmesh, stop, wait_gone, wait_json
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

pytestmark = pytest.mark.faults

UP_TIMEOUT = 240
# Field number 0 does not exist in any message: no protobuf parser accepts these bytes.
BAD = b"\x07"
# Reflection itself answers in-band (its stream carries error responses), and is how we list.
SKIP_SERVICES = {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}


@dataclass(frozen=True)
class Method:
    path: str
    client_streaming: bool
    server_streaming: bool


def methods_of(addr: str) -> list[Method]:
    with grpc.insecure_channel(addr) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(db)
        found = []
        for service_name in db.get_services():
            if service_name in SKIP_SERVICES:
                continue
            service = pool.FindServiceByName(service_name)
            for method in service.methods:
                proto = descriptor_pb2.MethodDescriptorProto()
                method.CopyToProto(proto)
                found.append(
                    Method(f"/{service_name}/{method.name}", proto.client_streaming, proto.server_streaming)
                )
        return found


def send_bad_bytes(channel: grpc.Channel, method: Method) -> grpc.RpcError:
    kw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    with pytest.raises(grpc.RpcError) as e:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(method.path, **kw)(iter([BAD]), timeout=20))
        elif method.client_streaming:
            channel.stream_unary(method.path, **kw)(iter([BAD]), timeout=20)
        elif method.server_streaming:
            list(channel.unary_stream(method.path, **kw)(BAD, timeout=20))
        else:
            channel.unary_unary(method.path, **kw)(BAD, timeout=20)
    return e.value  # type: ignore[return-value]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bad-bytes")
    root, log = tmp / "suite", tmp / "up.log"
    proc = mlmesh(["up", "--root", str(root), "--shards", "1", "--replicas", "1", "--workers", "1"], log, tmp)
    try:
        yield wait_json(root / "run" / "suite.json", UP_TIMEOUT, proc, log)
    finally:
        stop(proc)
        wait_gone(str(root), timeout=20)


def test_every_rpc_of_every_service_refuses_bytes_that_do_not_parse(suite: dict[str, Any]) -> None:
    grpc_services = [s for s in suite["services"] if s["name"] != "gateway"]
    assert {s["name"] for s in grpc_services} >= {"ingest", "ps-0", "serving-0"}
    checked: list[str] = []
    for service in grpc_services:
        methods = methods_of(service["addr"])
        assert any(m.path.startswith("/grpc.health.v1.Health/") for m in methods), service["name"]
        with grpc.insecure_channel(service["addr"]) as channel:
            for method in methods:
                error = send_bad_bytes(channel, method)
                name = method.path.rsplit("/", 1)[1]
                # Generated-message methods name the path and type; raw-bytes methods parse
                # their own framing and name the method and the message they expected.
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.path, error.details())
                assert name in (error.details() or ""), (method.path, error.details())
                checked.append(method.path)
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service["name"]
    assert len(checked) >= 30, checked


def test_through_the_gateway_the_replica_refuses_them_the_same_way(suite: dict[str, Any]) -> None:
    replica = next(s for s in suite["services"] if s["name"].startswith("serving"))
    routed = ("/mlmesh.serving.v1.ServingService/", "/tensorflow.serving.PredictionService/")
    methods = [m for m in methods_of(replica["addr"]) if m.path.startswith(routed)]
    assert methods
    with grpc.insecure_channel(suite["gateway_grpc"]) as channel:
        for method in methods:
            error = send_bad_bytes(channel, method)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.path, error.details())
            assert method.path in (error.details() or "")
