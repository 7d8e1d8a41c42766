"""Aggregated discovery (ADS), state of the world: one gRPC stream per Envoy carries LDS,
RDS, CDS and EDS.

Per stream and type the server keeps the names Envoy asked for, the nonce and
version it sent last, and the versions Envoy rejected. The rules (FIELD-NOTES):

- a request whose nonce is not the latest sent for its type is stale: ignored;
- `error_detail` set: a NACK of the version sent last; logged with Envoy's
  message, counted, remembered for this node, and never sent again to it;
- an empty nonce (a new subscription or a reconnect): answered with the full
  current state of that type, whatever version Envoy says it holds (unless
  that node rejected exactly this version before);
- otherwise an ACK; answered again only if the requested names changed, or,
  for EDS, after a CDS change (a re-created cluster waits for its endpoints);
- a new snapshot: each type whose version for this stream changed is pushed,
  clusters and endpoints before listeners and routes.

`SnapshotCache` is used from one event loop; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from mlmesh.logging import get_logger
from prometheus_client import Counter, Gauge

from gateway.xds import resources as rs
from gateway.xds.snapshot import PUSH_ORDER, WILDCARD_TYPES, Ports, Snapshot

log = get_logger("gateway.xds")

SNAPSHOTS = Counter("mlmesh_xds_snapshots_total", "Snapshots built (config or endpoints changed)")
PUSHES = Counter("mlmesh_xds_responses_total", "Discovery responses sent", ["type"])
ACKS = Counter("mlmesh_xds_acks_total", "Responses Envoy accepted", ["type"])
NACKS = Counter("mlmesh_xds_nacks_total", "Responses Envoy rejected", ["type"])
STALE = Counter("mlmesh_xds_stale_requests_total", "Requests with an outdated nonce (ignored)", ["type"])
STREAMS = Gauge("mlmesh_xds_streams", "Open ADS streams")

TYPE_NAMES = {
    rs.LISTENER_TYPE: "LDS",
    rs.ROUTE_TYPE: "RDS",
    rs.CLUSTER_TYPE: "CDS",
    rs.ENDPOINT_TYPE: "EDS",
}
_SNAPSHOT = object()  # queued to every stream when the snapshot changes


class SnapshotCache:
    """The current snapshot, the open streams, and the versions each node rejected."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.rejected: dict[tuple[str, str], set[str]] = {}
        # The latest NACKs as (node, type, rejected version, Envoy's error), newest last.
        self.nacks: deque[tuple[str, str, str, str]] = deque(maxlen=100)
        self._streams: set[asyncio.Queue[object]] = set()
        self._ready = asyncio.Event()

    def set(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        SNAPSHOTS.inc()
        self._ready.set()
        for q in self._streams:
            q.put_nowait(_SNAPSHOT)

    def subscribe(self) -> asyncio.Queue[object]:
        """A queue that gets a marker each time the snapshot changes (requests go in it too)."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._streams.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[object]) -> None:
        self._streams.discard(queue)

    async def current(self) -> Snapshot:
        await self._ready.wait()
        assert self.snapshot is not None
        return self.snapshot


@dataclass
class _TypeState:
    names: tuple[str, ...] | None = None  # None: Envoy has not asked for this type yet
    nonce: str = ""
    sent_version: str = ""
    acked_version: str = ""


@dataclass
class _Stream:
    peer: str
    node_id: str = ""
    ports: Ports = ()
    types: dict[str, _TypeState] = field(default_factory=dict)


def listener_ports(node_metadata: struct_pb2.Struct) -> Ports:
    """The launcher's `listener_ports` node metadata ({"ingress": 8080}) as sorted pairs."""
    fields = node_metadata.fields
    if "listener_ports" not in fields or not fields["listener_ports"].HasField("struct_value"):
        return ()
    out = []
    for name, value in fields["listener_ports"].struct_value.fields.items():
        port = value.number_value
        if value.HasField("number_value") and port == int(port) and 0 <= port <= 65535:
            out.append((name, int(port)))
    return tuple(sorted(out))


def envoy_reason(message: str) -> str:
    """Envoy's NACK message without the copy of the resource it often starts with."""
    return message.rsplit("\n: ", 1)[-1][-1000:]


class AggregatedDiscoveryServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self._nonces = itertools.count(1)

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        """Incremental xDS is not served. The first request is read first, so bytes that do
        not parse are INVALID_ARGUMENT like on every other method."""
        async for _ in request_iterator:
            break
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "incremental (delta) xDS is not served: use state-of-the-world ADS (StreamAggregatedResources)",
        )
        yield discovery_pb2.DeltaDiscoveryResponse()  # unreachable: abort raises; makes this a generator

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = _Stream(peer=context.peer())
        queue = self._cache.subscribe()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    queue.put_nowait(request)
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        STREAMS.inc()
        try:
            snapshot = await self._cache.current()
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item is _SNAPSHOT:
                    snapshot = await self._cache.current()
                    for type_url in PUSH_ORDER:
                        st = stream.types.get(type_url)
                        if st is not None and st.names is not None:
                            response = self._respond(stream, snapshot, type_url, force=False)
                            if response is not None:
                                yield response
                    continue
                assert isinstance(item, discovery_pb2.DiscoveryRequest)
                for response in self._on_request(stream, snapshot, item):
                    yield response
        finally:
            STREAMS.dec()
            self._cache.unsubscribe(queue)
            reader.cancel()
            if stream.node_id:
                log.info("xds_stream_closed", node=stream.node_id, peer=stream.peer)

    def _on_request(
        self, stream: _Stream, snapshot: Snapshot, req: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse]:
        type_url = req.type_url
        kind = TYPE_NAMES.get(type_url)
        if kind is None:
            log.warning("xds_unknown_type", type_url=type_url, node=stream.node_id)
            return []
        if req.HasField("node") and req.node.id:
            if not stream.node_id:
                log.info("xds_stream_opened", node=req.node.id, peer=stream.peer)
            stream.node_id = req.node.id
            stream.ports = listener_ports(req.node.metadata)
        st = stream.types.setdefault(type_url, _TypeState())
        names = () if type_url in WILDCARD_TYPES else tuple(sorted(set(req.resource_names)))
        if req.response_nonce and req.response_nonce != st.nonce:
            STALE.labels(kind).inc()
            return []
        names_changed = names != st.names
        st.names = names
        if req.HasField("error_detail"):
            NACKS.labels(kind).inc()
            self._cache.rejected.setdefault((stream.node_id, type_url), set()).add(st.sent_version)
            self._cache.nacks.append((stream.node_id, kind, st.sent_version, req.error_detail.message))
            log.warning(
                "xds_nack",
                type=kind,
                node=stream.node_id,
                rejected_version=st.sent_version,
                envoy_keeps_version=req.version_info,
                error=envoy_reason(req.error_detail.message),
            )
            return [r for r in [self._respond(stream, snapshot, type_url, force=False)] if r]
        if not req.response_nonce:
            return [r for r in [self._respond(stream, snapshot, type_url, force=True)] if r]
        ACKS.labels(kind).inc()
        st.acked_version = req.version_info
        log.debug("xds_ack", type=kind, node=stream.node_id, version=req.version_info)
        out = [self._respond(stream, snapshot, type_url, force=names_changed)]
        eds = stream.types.get(rs.ENDPOINT_TYPE)
        if type_url == rs.CLUSTER_TYPE and eds is not None and eds.names is not None:
            out.append(self._respond(stream, snapshot, rs.ENDPOINT_TYPE, force=True))
        return [r for r in out if r]

    def _respond(
        self, stream: _Stream, snapshot: Snapshot, type_url: str, *, force: bool
    ) -> discovery_pb2.DiscoveryResponse | None:
        st = stream.types[type_url]
        resources, version = snapshot.select(type_url, st.names or (), stream.ports)
        if version in self._cache.rejected.get((stream.node_id, type_url), ()):
            return None  # Envoy refused exactly this; wait for a different one
        if not force and version == st.sent_version:
            return None
        st.nonce = str(next(self._nonces))
        st.sent_version = version
        kind = TYPE_NAMES[type_url]
        PUSHES.labels(kind).inc()
        log.info(
            "xds_push",
            type=kind,
            node=stream.node_id,
            version=version,
            nonce=st.nonce,
            resources=len(resources),
            snapshot=snapshot.serial,
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=version, resources=resources, type_url=type_url, nonce=st.nonce
        )
