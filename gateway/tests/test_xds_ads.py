"""The ADS protocol rules, one per test, against the real servicer over real gRPC. The client
speaks exactly what Envoy sends (test_xds.py runs the same server against Envoy itself)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2
from mlmesh.discovery import Instance
from mlmesh.discovery.static import StaticRegistry

from gateway.xds import resources as rs
from gateway.xds.ads import AggregatedDiscoveryServicer
from gateway.xds.config import DEFAULT_CONFIG_PATH, load_config
from gateway.xds.control import ControlPlane

pytestmark = pytest.mark.unit

LDS, RDS, CDS, EDS = rs.LISTENER_TYPE, rs.ROUTE_TYPE, rs.CLUSTER_TYPE, rs.ENDPOINT_TYPE
QUIET = 0.3  # how long "no response" is waited for


class Envoy:
    """One ADS stream, as Envoy drives it: requests written, responses collected."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node: base_pb2.Node) -> None:
        self.call = stub.StreamAggregatedResources()
        self.node: base_pb2.Node | None = node
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            self.responses.put_nowait(response)

    async def ask(self, type_url: str, names: tuple[str, ...] = (), **fields: Any) -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names, **fields)
        if self.node is not None:  # set_node_on_first_message_only
            request.node.CopyFrom(self.node)
            self.node = None
        await self.call.write(request)

    async def ack(self, r: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()) -> None:
        await self.ask(r.type_url, names, version_info=r.version_info, response_nonce=r.nonce)

    async def next(self) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.responses.get(), 5)

    async def silent(self) -> bool:
        await asyncio.sleep(QUIET)
        return self.responses.empty()

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()


def node(listener_ports: dict[str, int] | None = None, node_id: str = "envoy-1") -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    if listener_ports is not None:
        metadata.update({"listener_ports": listener_ports})
    return base_pb2.Node(id=node_id, metadata=metadata)


Scenario = Callable[[ControlPlane, StaticRegistry, Callable[..., Envoy]], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        registry = StaticRegistry.parse("serving=127.0.0.1:9001,127.0.0.1:9002")
        control = ControlPlane(
            load_config(DEFAULT_CONFIG_PATH), registry, descriptor_set=b"", admin_token="t" * 20
        )
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AggregatedDiscoveryServicer(control.cache), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await control.start()
        streams: list[Envoy] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

            def envoy(n: base_pb2.Node | None = None) -> Envoy:
                streams.append(Envoy(stub, n or node()))
                return streams[-1]

            try:
                await scenario(control, registry, envoy)
            finally:
                for s in streams:
                    await s.close()
                await control.close()
                await server.stop(0)

    asyncio.run(main())


def test_empty_nonce_is_answered_with_the_full_state_of_that_type() -> None:
    async def scenario(control: ControlPlane, registry: StaticRegistry, envoy: Callable[..., Envoy]) -> None:
        e = envoy()
        await e.ask(CDS)
        cds = await e.next()
        assert cds.type_url == CDS and cds.nonce
        # serving, its keyed twin, ingest, trainer
        assert sorted(r.type_url for r in cds.resources) == [CDS] * 4
        # A reconnect says which version it holds and no nonce: still the full state.
        again = envoy()
        await again.ask(CDS, version_info=cds.version_info)
        assert (await again.next()).version_info == cds.version_info

    run(scenario)


def test_rds_and_eds_answer_the_names_requested() -> None:
    async def scenario(control: ControlPlane, registry: StaticRegistry, envoy: Callable[..., Envoy]) -> None:
        e = envoy()
        await e.ask(EDS, ("serving",))
        eds = await e.next()
        assert len(eds.resources) == 1
        await e.ack(eds, ("ingest", "serving"))  # a new cluster asks too
        assert len((await e.next()).resources) == 2
        await e.ask(RDS, ("internal",))
        assert len((await e.next()).resources) == 1

    run(scenario)


def test_ack_of_the_current_version_gets_no_answer() -> None:
    async def scenario(control: ControlPlane, registry: StaticRegistry, envoy: Callable[..., Envoy]) -> None:
        e = envoy()
        await e.ask(LDS)
        await e.ack(await e.next())
        assert await e.silent()

    run(scenario)


def test_stale_nonce_is_ignored() -> None:
    async def scenario(control: ControlPlane, registry: StaticRegistry, envoy: Callable[..., Envoy]) -> None:
        e = envoy()
        await e.ask(EDS, ("serving",))
        first = await e.next()
        await registry.register(Instance("serving", "127.0.0.1", 9003))
        second = await e.next()  # pushed on the registry change
        assert second.version_info != first.version_info
        # Envoy's request still answering the first response, asking for other names: stale.
        await e.ask(EDS, ("ingest",), version_info=first.version_info, response_nonce=first.nonce)
        assert await e.silent()

    run(scenario)


def test_nack_is_recorded_and_the_rejected_version_never_resent() -> None:
    async def scenario(control: ControlPlane, registry: StaticRegistry, envoy: Callable[..., Envoy]) -> None:
        e = envoy()
        await e.ask(EDS, ("serving",))
        good = await e.next()
        await e.ack(good, ("serving",))
        await registry.register(Instance("serving", "127.0.0.1", 9003))
        bad = await e.next()
        await e.ask(
            EDS,
            ("serving",),
            version_info=good.version_info,
            response_nonce=bad.nonce,
            error_detail=status_pb2.Status(code=3, message="endpoint 9003 refused"),
        )
        assert await e.silent()
        assert control.cache.nacks[-1] == ("envoy-1", "EDS", bad.version_info, "endpoint 9003 refused")
        control.rebuild("same endpoints again")  # the same rejected content: not resent
        assert await e.silent()
        # A reconnecting stream of the same node is not offered it either.
        again = envoy(node())
        await again.ask(EDS, ("serving",), version_info=good.version_info)
        assert await again.silent()
        await registry.deregister(Instance("serving", "127.0.0.1", 9003))  # different content: sent
        assert (await e.next()).version_info == good.version_info

    run(scenario)


def test_eds_is_answered_again_after_a_cds_change() -> None:
    async def scenario(control: ControlPlane, registry: StaticRegistry, envoy: Callable[..., Envoy]) -> None:
        e = envoy()
        await e.ask(CDS)
        cds = await e.next()
        await e.ask(EDS, ("serving",))
        eds = await e.next()
        await e.ack(eds, ("serving",))
        await e.ack(cds)
        # Re-created clusters wait for endpoints: EDS comes again, same version, new nonce.
        again = await e.next()
        assert (again.type_url, again.version_info) == (EDS, eds.version_info)
        assert again.nonce != eds.nonce

    run(scenario)


def test_a_registry_change_pushes_only_endpoints() -> None:
    async def scenario(control: ControlPlane, registry: StaticRegistry, envoy: Callable[..., Envoy]) -> None:
        e = envoy()
        for type_url, names in ((CDS, ()), (EDS, ("serving",)), (LDS, ()), (RDS, ("ingress",))):
            await e.ask(type_url, names)
            await e.ack(await e.next(), names)
        while not await e.silent():  # the EDS answered again after the CDS ACK
            await e.ack(await e.next(), ("serving",))
        await registry.register(Instance("serving", "127.0.0.1", 9003))
        pushed = await e.next()
        assert pushed.type_url == EDS
        assert await e.silent()

    run(scenario)


def test_listener_ports_come_from_the_node_metadata() -> None:
    async def scenario(control: ControlPlane, registry: StaticRegistry, envoy: Callable[..., Envoy]) -> None:
        e = envoy(node({"ingress": 18080, "internal": 18081}))
        await e.ask(LDS)
        listeners = {}
        for r in (await e.next()).resources:
            listener = listener_pb2.Listener()
            r.Unpack(listener)
            listeners[listener.name] = listener.address.socket_address.port_value
        assert listeners == {"ingress": 18080, "internal": 18081}

    run(scenario)
