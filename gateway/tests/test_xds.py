"""Envoy configured only through our control plane: a real Envoy (the launcher with
--xds-addr), three real fake-serving replicas, and the control plane running in this
process so the tests can change the registry (StaticRegistry.register/deregister) and
push a resource Envoy must reject."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import any_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlmesh.channels import sync_channel
from mlmesh.descriptors import serving_descriptor_set
from mlmesh.discovery import Instance
from mlmesh.discovery.static import StaticRegistry
from mlmesh.serving.v1 import admin_pb2, admin_pb2_grpc, serving_pb2

from gateway.tests.conftest import ADMIN_TOKEN, Proc, ProcessGroup, listener_of, wait_until, write_config
from gateway.tests.http_util import header, http, serving_stub
from gateway.xds import ads
from gateway.xds import resources as rs
from gateway.xds.ads import AggregatedDiscoveryServicer
from gateway.xds.config import load_config
from gateway.xds.control import ControlPlane
from gateway.xds.snapshot import Snapshot

pytestmark = pytest.mark.integration

T = TypeVar("T")
HEALTH = "grpc.health.v1.Health"


def with_test_routes(data: dict[str, Any]) -> None:
    """The shipped config plus a rate-limited HTTP path and gRPC service, and an admin
    route to the replicas' health service (answers SERVING once the token passes)."""
    ingress, internal = listener_of(data, "ingress"), listener_of(data, "internal")
    ingress["routes"].append(
        {
            "name": "limited",
            "kind": "status",
            "match": {"path": "/limited"},
            "direct_response": "ok\n",
            "rate_limit": {"requests": 2, "per": "1h"},
        }
    )
    next(r for r in ingress["routes"] if r["name"] == "tfs-status")["rate_limit"] = {
        "requests": 2,
        "per": "1h",
    }
    internal["routes"].append(
        {"name": "health-admin", "kind": "admin", "match": {"grpc_service": HEALTH}, "cluster": "serving"}
    )


class InProcessControlPlane:
    """The control plane's ADS server on its own event loop thread in this process."""

    def __init__(self, control_args: dict[str, Any], spec: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.call(self._start(control_args, spec))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, control_args: dict[str, Any], spec: str) -> int:
        self.registry = StaticRegistry.parse(spec)
        self.control = ControlPlane(registry=self.registry, **control_args)
        self.server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AggregatedDiscoveryServicer(self.control.cache), self.server
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        await self.control.start()
        return port

    def register(self, proc: Proc) -> None:
        self.call(self.registry.register(instance(proc)))

    def deregister(self, proc: Proc) -> None:
        self.call(self.registry.deregister(instance(proc)))

    def push(self, snapshot: Snapshot) -> None:
        async def set_it() -> None:
            self.control.cache.set(snapshot)

        self.call(set_it())

    def rebuild(self) -> None:
        async def rebuild() -> None:
            self.control.rebuild("test")

        self.call(rebuild())

    def close(self) -> None:
        self.call(self.server.stop(0))
        self.call(self.control.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def instance(proc: Proc) -> Instance:
    return Instance(service="serving", host="127.0.0.1", port=proc.ports["port"])


@dataclass
class XdsMesh:
    cp: InProcessControlPlane
    replicas: list[Proc]
    gateway: Proc

    @property
    def port(self) -> int:
        return self.gateway.ports["port"]

    @property
    def internal_port(self) -> int:
        return self.gateway.ports["internal_port"]

    @property
    def admin_port(self) -> int:
        return self.gateway.ports["admin_port"]

    def healthy(self, cluster: str = "serving") -> set[str]:
        body = http(self.admin_port, "GET", "/clusters").body.decode()
        return {
            line.split("::")[1]
            for line in body.splitlines()
            if line.startswith(f"{cluster}::") and line.endswith("::health_flags::healthy")
        }

    def replicas_answering(self, n: int = 20) -> Counter[str | None]:
        request = serving_pb2.GetModelStatusRequest(model_name="m")
        channel, stub = serving_stub(f"127.0.0.1:{self.port}")
        seen: Counter[str | None] = Counter()
        with channel:
            for _ in range(n):
                _, call = stub.GetModelStatus.with_call(request, timeout=5)
                seen[header(call.initial_metadata(), "x-replica-id")] += 1
        return seen


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XdsMesh]:
    work = tmp_path_factory.mktemp("xds")
    group = ProcessGroup(work)
    cp = None
    try:
        replicas = [group.backend(f"r{i}") for i in range(3)]
        config = load_config(write_config(work / "gateway.yaml", with_test_routes))
        control_args = {
            "config": config,
            "descriptor_set": serving_descriptor_set(),
            "admin_token": ADMIN_TOKEN,
        }
        cp = InProcessControlPlane(control_args, "serving=" + ",".join(r.addr for r in replicas[:2]))
        gateway = group.static_gateway("gw", [], "--xds-addr", f"127.0.0.1:{cp.port}")
        mesh = XdsMesh(cp, replicas, gateway)
        assert wait_until(lambda: mesh.healthy() == {r.addr for r in replicas[:2]}, 15), mesh.healthy()
        yield mesh
    finally:
        group.close()
        if cp is not None:
            cp.close()


def counter(c: Any, kind: str) -> float:
    return float(c.labels(kind)._value.get())


def dynamic_versions(mesh: XdsMesh) -> dict[str, set[str]]:
    """Envoy's accepted version of each dynamic resource, from its admin /config_dump."""
    dump = http(mesh.admin_port, "GET", "/config_dump?include_eds").json()
    out: dict[str, set[str]] = {}
    for section in dump["configs"]:
        for key in (
            "dynamic_active_clusters",
            "dynamic_listeners",
            "dynamic_route_configs",
            "dynamic_endpoint_configs",
        ):
            for entry in section.get(key, []):
                version = entry.get("version_info") or entry.get("active_state", {}).get("version_info")
                out.setdefault(key, set()).add(version)
    return out


def test_envoy_acks_every_type_and_holds_the_versions_we_sent(mesh: XdsMesh) -> None:
    for kind in ("LDS", "RDS", "CDS", "EDS"):
        assert counter(ads.ACKS, kind) >= 1, kind
    snapshot = mesh.cp.control.cache.snapshot
    assert snapshot is not None
    _, cds = snapshot.select(rs.CLUSTER_TYPE, ())
    versions = dynamic_versions(mesh)
    assert versions["dynamic_active_clusters"] == {cds}
    assert len(versions["dynamic_listeners"]) == 1  # both listeners, one LDS version
    assert set(mesh.replicas_answering()) == {"r0", "r1"}


def test_endpoint_added_to_the_registry_takes_traffic_and_a_removed_one_stops(mesh: XdsMesh) -> None:
    r0, _, r2 = mesh.replicas
    mesh.cp.register(r2)
    added = time.monotonic()
    assert wait_until(lambda: "r2" in mesh.replicas_answering(10), 5)
    print(f"registered endpoint took traffic after {time.monotonic() - added:.2f}s")
    mesh.cp.deregister(r0)
    removed = time.monotonic()
    # r0 still passes health checks: ignore_health_on_host_removal takes it out anyway.
    assert wait_until(
        lambda: r0.addr not in mesh.healthy() and r0.addr not in mesh.healthy("serving_keyed"), 5
    )
    print(f"deregistered endpoint left rotation after {time.monotonic() - removed:.2f}s")
    assert "r0" not in mesh.replicas_answering(30)
    mesh.cp.register(r0)  # back as it was, for the other tests
    mesh.cp.deregister(r2)
    assert wait_until(lambda: mesh.healthy() == {r0.addr, mesh.replicas[1].addr}, 10)


def test_an_instance_registered_under_a_dns_name_reaches_envoy_as_addresses(mesh: XdsMesh) -> None:
    # Envoy's EDS takes IPs only (a name is NACKed): the control plane resolves names itself.
    r2 = mesh.replicas[2]
    named = Instance(service="serving", host="localhost", port=r2.ports["port"])
    mesh.cp.call(mesh.cp.registry.register(named))
    assert wait_until(lambda: "r2" in mesh.replicas_answering(10), 5)
    assert f"127.0.0.1:{r2.ports['port']}" in {i.addr for i in mesh.cp.control._endpoints["serving"]}
    mesh.cp.call(mesh.cp.registry.deregister(named))
    assert wait_until(lambda: r2.addr not in mesh.healthy(), 10)


def test_resolve_keeps_ips_expands_names_and_drops_unresolvable_ones() -> None:
    from gateway.xds.control import resolve

    got = asyncio.run(
        resolve(
            [
                Instance(service="serving", host="10.1.2.3", port=80),
                Instance(service="serving", host="localhost", port=81, instance_id="by-name"),
                Instance(service="serving", host="no-such-host.invalid", port=82),
            ]
        )
    )
    assert got[0].addr == "10.1.2.3:80"
    assert "127.0.0.1:81" in {i.addr for i in got[1:]}
    assert all(i.instance_id.startswith("by-name@") for i in got[1:])
    assert all(i.port != 82 for i in got)


def test_resource_envoy_rejects_is_nacked_logged_and_not_resent(mesh: XdsMesh) -> None:
    good = mesh.cp.control.cache.snapshot
    assert good is not None
    broken = cluster_pb2.Cluster()
    good.resources[rs.CLUSTER_TYPE]["serving"].Unpack(broken)
    broken.health_checks[0].ClearField("timeout")  # required by Envoy's own validation
    bad_any = any_pb2.Any()
    bad_any.Pack(broken, deterministic=True)
    clusters = {**good.resources[rs.CLUSTER_TYPE], "serving": bad_any}
    bad = dataclasses.replace(good, serial=10_000, resources={**good.resources, rs.CLUSTER_TYPE: clusters})
    _, bad_version = bad.select(rs.CLUSTER_TYPE, ())
    nacks, pushes = counter(ads.NACKS, "CDS"), counter(ads.PUSHES, "CDS")

    mesh.cp.push(bad)
    assert wait_until(lambda: counter(ads.NACKS, "CDS") == nacks + 1, 10)
    node, kind, version, error = mesh.cp.control.cache.nacks[-1]
    assert node.startswith("mlmesh-gateway-")
    assert (kind, version) == ("CDS", bad_version)
    assert "timeout" in error.lower()  # Envoy's own message
    assert counter(ads.PUSHES, "CDS") == pushes + 1
    mesh.cp.push(bad)  # the same content again: not resent
    time.sleep(1.0)
    assert counter(ads.PUSHES, "CDS") == pushes + 1
    assert counter(ads.NACKS, "CDS") == nacks + 1
    assert bad_version not in dynamic_versions(mesh)["dynamic_active_clusters"]
    assert set(mesh.replicas_answering(10)) <= {"r0", "r1"}  # still serving on the last good config

    mesh.cp.rebuild()  # a good config is sent and accepted
    _, good_version = good.select(rs.CLUSTER_TYPE, ())
    assert wait_until(lambda: dynamic_versions(mesh)["dynamic_active_clusters"] == {good_version}, 10)


def test_admin_routes_are_not_on_the_public_listener(mesh: XdsMesh) -> None:
    r = http(mesh.port, "POST", "/mlmesh.serving.v1.ServingAdminService/GetBatching", b"")
    assert r.status == 404
    channel = sync_channel(f"127.0.0.1:{mesh.port}")
    with channel, pytest.raises(grpc.RpcError) as err:
        admin_pb2_grpc.ServingAdminServiceStub(channel).GetBatching(admin_pb2.GetBatchingRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # Envoy's 404 in gRPC terms


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "need an authorization: Bearer token"),
        ((("authorization", "Bearer wrong-token-0000000000"),), "invalid"),
    ],
    ids=["no-token", "wrong-token"],
)
def test_admin_request_without_the_right_token_is_unauthenticated(
    mesh: XdsMesh, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    channel = sync_channel(f"127.0.0.1:{mesh.internal_port}")
    with channel, pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert message in str(err.value.details())
    r = http(mesh.internal_port, "POST", "/mlmesh.ingest.v1.IngestService/CreateDataset", {}, dict(metadata))
    assert r.status == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


def test_admin_request_with_the_token_reaches_the_service(mesh: XdsMesh) -> None:
    channel = sync_channel(f"127.0.0.1:{mesh.internal_port}")
    with channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_local_rate_limit_is_429_for_http_and_resource_exhausted_for_grpc(mesh: XdsMesh) -> None:
    statuses = [http(mesh.port, "GET", "/limited").status for _ in range(3)]
    assert statuses == [200, 200, 429]
    channel = sync_channel(f"127.0.0.1:{mesh.port}")
    # TF Serving's ModelService by path (its stubs would import TensorFlow): an empty request.
    status = channel.unary_unary("/tensorflow.serving.ModelService/GetModelStatus")
    codes = []
    with channel:
        for _ in range(3):
            try:
                status(b"", timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    # The fake replica has no TF Serving ModelService: UNIMPLEMENTED proves the call got through.
    assert codes == [grpc.StatusCode.UNIMPLEMENTED] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    # Other routes have no limit.
    assert sum(mesh.replicas_answering(5).values()) == 5
