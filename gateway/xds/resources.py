"""Envoy resources (LDS, RDS, CDS, EDS) built from a `GatewayConfig` and live endpoints.

Every resource is an xds-protos message; nothing is hand-written JSON. This is a
port of what `gateway/core/bootstrap.py` renders statically (same HTTP filters,
health checks, outlier ejection, deadlines), with EDS clusters, a retry budget
instead of a raised retry breaker, least-request balancing for keyless requests,
a MAGLEV twin `<cluster>_keyed` for prediction routes carrying `idempotency-key`,
an internal listener whose admin routes need a bearer token, and local rate
limits. Pure functions; safe from any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import any_pb2, descriptor_pb2, duration_pb2, json_format, wrappers_pb2
from google.protobuf.message import Message
from mlmesh.discovery import Instance

from gateway.core.backends import Backend
from gateway.core.bootstrap import IDEMPOTENCY_HEADER, BootstrapInputs, build_bootstrap
from gateway.xds.config import Cluster, GatewayConfig, Listener, RateLimit, Route

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
KEYED_SUFFIX = "_keyed"
LUA_FILTER = "envoy.filters.http.lua"
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"


def packed(message: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    # Deterministic bytes: equal resources hash to equal versions (map fields are sorted).
    out.Pack(message, deterministic=True)
    return out


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def stat_prefix(listener: Listener) -> str:
    """`ingress` -> `ingress_http` (the launcher reads `http.ingress_http.downstream_rq_active`)."""
    return f"{listener.name}_http"


# -- HTTP filters ----------------------------------------------------------------------------


@cache
def static_hcm() -> dict[str, Any]:
    """The HTTP connection manager of the rendered static bootstrap, so both paths share one
    source for what they have in common (written in the template or filled in by bootstrap.py)."""
    rendered = build_bootstrap(
        BootstrapInputs(
            node_id="xds",
            listen_host="127.0.0.1",
            listen_port=0,
            admin_host="127.0.0.1",
            admin_port=0,
            descriptor_path=Path("unused.pb"),
            max_body_bytes=1024,
            backends=(Backend("127.0.0.1", 1),),
        )
    )
    listener = rendered["static_resources"]["listeners"][0]
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


def static_http_filter(name: str) -> dict[str, Any]:
    """The typed_config of an HTTP filter of the static bootstrap."""
    return dict(next(f["typed_config"] for f in static_hcm()["http_filters"] if f["name"] == name))


def rest_local_replies() -> hcm_pb2.LocalReplyConfig:
    """Envoy's own error replies (413, 503, ...) in TF Serving's REST shape {"error": ...},
    as the static template has them; gRPC clients still get grpc-status/grpc-message."""
    return json_format.ParseDict(static_hcm()["local_reply_config"], hcm_pb2.LocalReplyConfig())


def status_lua_source() -> str:
    """The Lua filter of the static bootstrap: REST errors as {"error": ...}, 422 for FAILED_PRECONDITION."""
    return str(static_http_filter(LUA_FILTER)["default_source_code"]["inline_string"])


def admin_auth_lua(token: str | None) -> str:
    """Lua that lets a request through only with `authorization: Bearer <token>`.

    Otherwise 401 with a JSON body, or for gRPC a trailers-only UNAUTHENTICATED (Lua's
    respond() bypasses Envoy's gRPC local-reply mapping, so the gRPC form is built here).
    `token` is validated by XdsSettings to carry no quote or backslash. None refuses all.
    """
    expected = "nil" if token is None else f"'Bearer {token}'"
    return f"""local expected = {expected}
function envoy_on_request(handle)
  local auth = handle:headers():get('authorization')
  if expected ~= nil and auth == expected then
    return
  end
  local msg = 'admin routes need an authorization: Bearer token'
  if auth ~= nil then
    msg = 'invalid admin bearer token'
  end
  local ct = handle:headers():get('content-type') or ''
  if string.find(ct, 'application/grpc', 1, true) == 1 then
    handle:respond({{[':status'] = '200', ['content-type'] = 'application/grpc',
      ['grpc-status'] = '16', ['grpc-message'] = msg}}, nil)
  else
    handle:respond({{[':status'] = '401', ['www-authenticate'] = 'Bearer',
      ['content-type'] = 'application/json'}}, '{{"code":16,"message":"' .. msg .. '"}}')
  end
end
"""


def token_bucket(limit: RateLimit) -> token_bucket_pb2.TokenBucket:
    return token_bucket_pb2.TokenBucket(
        max_tokens=limit.burst or limit.requests,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=limit.requests),
        fill_interval=seconds(limit.per),
    )


def local_rate_limit(prefix: str, limit: RateLimit | None) -> local_rate_limit_pb2.LocalRateLimit:
    """429 for HTTP, RESOURCE_EXHAUSTED (not Envoy's default UNAVAILABLE) for gRPC."""
    always = base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        ),
        runtime_key=f"{prefix}.local_rate_limit_enabled",
    )
    config = local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=prefix,
        filter_enabled=always,
        filter_enforced=always,
        rate_limited_as_resource_exhausted=True,
    )
    if limit is not None:
        config.token_bucket.CopyFrom(token_bucket(limit))
    return config


def http_filters(
    listener: Listener, descriptor_set: bytes, admin_token: str | None
) -> list[hcm_pb2.HttpFilter]:
    filters: list[hcm_pb2.HttpFilter] = []
    prefix = stat_prefix(listener)
    if listener.limits.rate_limit is not None or any(r.rate_limit for r in listener.routes):
        filters.append(
            hcm_pb2.HttpFilter(
                name=RATE_LIMIT_FILTER,
                typed_config=packed(local_rate_limit(prefix, listener.limits.rate_limit)),
            )
        )
    if listener.kind == "internal":
        auth = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=admin_auth_lua(admin_token)))
        filters.append(hcm_pb2.HttpFilter(name=LUA_FILTER, typed_config=packed(auth)))
    if listener.json_services:
        # Before the transcoder, so it sees the transcoded reply (see the template's comment).
        status = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=status_lua_source()))
        filters.append(hcm_pb2.HttpFilter(name=LUA_FILTER, typed_config=packed(status)))
        transcoder = transcoder_pb2.GrpcJsonTranscoder(
            proto_descriptor_bin=descriptor_set,
            services=list(listener.json_services),
            # false: routes match the transcoded gRPC path, so one route serves JSON and gRPC.
            match_incoming_request_route=False,
            convert_grpc_status=True,
            print_options=transcoder_pb2.GrpcJsonTranscoder.PrintOptions(
                always_print_primitive_fields=True, preserve_proto_field_names=True
            ),
            max_request_body_size=wrappers_pb2.UInt32Value(value=listener.limits.max_body_bytes),
            max_response_body_size=wrappers_pb2.UInt32Value(value=listener.limits.max_body_bytes),
        )
        filters.append(
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.grpc_json_transcoder", typed_config=packed(transcoder)
            )
        )
    filters.append(
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=packed(router_pb2.Router()))
    )
    return filters


def check_json_services(config: GatewayConfig, descriptor_set: bytes) -> None:
    """ValueError naming a listener's `json_services` entry the descriptor set lacks
    (Envoy would refuse the whole listener update)."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    known = {f"{f.package}.{svc.name}" for f in fds.file for svc in f.service}
    for i, x in enumerate(config.listeners):
        missing = [s for s in x.json_services if s not in known]
        if missing:
            raise ValueError(
                f"listeners[{i}]({x.name}).json_services: {missing} not in the descriptor set "
                f"(it has {sorted(known)})"
            )


# -- LDS -------------------------------------------------------------------------------------


def build_listener(
    listener: Listener,
    *,
    descriptor_set: bytes,
    admin_token: str | None,
    port: int | None = None,
    access_log: Sequence[Any] = (),
) -> listener_pb2.Listener:
    """One listener; `port` overrides the config's (the launcher's --port, from node metadata)."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix(listener),
        # AUTO: HTTP/1.1 JSON clients and gRPC (h2c prior knowledge) share the port.
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=listener.name),
        http_filters=http_filters(listener, descriptor_set, admin_token),
        access_log=list(access_log),
    )
    if listener.json_services:
        hcm.local_reply_config.CopyFrom(rest_local_replies())
    return listener_pb2.Listener(
        name=listener.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=listener.address, port_value=listener.port if port is None else port
            )
        ),
        # Off: a second gateway on the same port must fail to bind, not share the traffic.
        enable_reuse_port=wrappers_pb2.BoolValue(value=False),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=packed(hcm)
                    )
                ]
            )
        ],
    )


# -- RDS -------------------------------------------------------------------------------------


def retry_policy(cluster: Cluster, retry_on: Iterable[str] | None) -> route_components_pb2.RetryPolicy:
    r = cluster.retry
    policy = route_components_pb2.RetryPolicy(
        retry_on=",".join(retry_on if retry_on is not None else r.retry_on),
        num_retries=wrappers_pb2.UInt32Value(value=r.num_retries),
        # A retry goes to a replica not tried yet for this request.
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=packed(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=5,
        retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
            base_interval=seconds(0.01), max_interval=seconds(0.1)
        ),
    )
    if r.per_try_timeout > 0:
        policy.per_try_timeout.CopyFrom(seconds(r.per_try_timeout))
    return policy


def _route_action(route: Route, cluster: Cluster, target: str) -> route_components_pb2.RouteAction:
    return route_components_pb2.RouteAction(
        cluster=target,
        # timeout 0 + grpc_timeout_header_max 0: the client's deadline is the only limit
        # (Envoy's default 15 s route timeout would override it).
        timeout=seconds(route.timeout),
        max_stream_duration=route_components_pb2.RouteAction.MaxStreamDuration(
            grpc_timeout_header_max=seconds(0)
        ),
        retry_policy=retry_policy(cluster, route.retry_on),
    )


def _per_route(route: Route, prefix: str) -> dict[str, any_pb2.Any]:
    if route.rate_limit is None:
        return {}
    return {RATE_LIMIT_FILTER: packed(local_rate_limit(f"{prefix}_{route.name}", route.rate_limit))}


def build_routes(config: GatewayConfig, listener: Listener) -> route_pb2.RouteConfiguration:
    """The listener's routes: exact method paths before service prefixes (first match wins);
    a prediction route comes twice, the copy with `idempotency-key` first, to the MAGLEV twin."""
    ordered = sorted(
        ((kind, value, grpc, r) for r in listener.routes for kind, value, grpc in r.match.paths()),
        key=lambda t: (t[0] != "path", -len(t[1])),
    )
    prefix = stat_prefix(listener)
    out: list[route_components_pb2.Route] = []
    for kind, value, grpc, r in ordered:
        match = route_components_pb2.RouteMatch(**{kind: value})
        if grpc:
            match.grpc.SetInParent()
        per_route = _per_route(r, prefix)
        if r.direct_response is not None:
            out.append(
                route_components_pb2.Route(
                    name=r.name,
                    match=match,
                    direct_response=route_components_pb2.DirectResponseAction(
                        status=200, body=base_pb2.DataSource(inline_string=r.direct_response)
                    ),
                    typed_per_filter_config=per_route,
                )
            )
            continue
        assert r.cluster is not None
        cluster = config.cluster(r.cluster)
        if r.kind == "prediction":
            keyed_match = route_components_pb2.RouteMatch()
            keyed_match.CopyFrom(match)
            keyed_match.headers.append(
                route_components_pb2.HeaderMatcher(name=IDEMPOTENCY_HEADER, present_match=True)
            )
            action = _route_action(r, cluster, cluster.name + KEYED_SUFFIX)
            action.hash_policy.append(
                route_components_pb2.RouteAction.HashPolicy(
                    header=route_components_pb2.RouteAction.HashPolicy.Header(header_name=IDEMPOTENCY_HEADER)
                )
            )
            out.append(
                route_components_pb2.Route(
                    name=f"{r.name}-keyed", match=keyed_match, route=action, typed_per_filter_config=per_route
                )
            )
        out.append(
            route_components_pb2.Route(
                name=r.name,
                match=match,
                route=_route_action(r, cluster, cluster.name),
                typed_per_filter_config=per_route,
            )
        )
    return route_pb2.RouteConfiguration(
        name=listener.name,
        virtual_hosts=[route_components_pb2.VirtualHost(name=listener.name, domains=["*"], routes=out)],
        # Routes may be pushed before a cluster they name exists (RDS and CDS are separate).
        validate_clusters=wrappers_pb2.BoolValue(value=False),
    )


# -- CDS and EDS -----------------------------------------------------------------------------


def build_cluster(cluster: Cluster, *, keyed: bool = False) -> cluster_pb2.Cluster:
    """An EDS cluster of the registry service's healthy instances (the keyed twin: MAGLEV)."""
    hc, od, r = cluster.health_check, cluster.outlier, cluster.retry
    policy = "MAGLEV" if keyed else cluster.lb_policy
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                # Finds half-open connections to vanished replicas (no RST on a real network).
                connection_keepalive=protocol_pb2.KeepaliveSettings(interval=seconds(30), timeout=seconds(10))
            )
        )
    )
    out = cluster_pb2.Cluster(
        name=cluster.name + (KEYED_SUFFIX if keyed else ""),
        type=cluster_pb2.Cluster.EDS,
        # Both twins read one ClusterLoadAssignment, named after the cluster.
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ads_source(), service_name=cluster.name
        ),
        connect_timeout=seconds(cluster.connect_timeout),
        lb_policy=cluster_pb2.Cluster.LbPolicy.Value(policy),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": packed(http2)
        },
        health_checks=[
            health_check_pb2.HealthCheck(
                timeout=seconds(hc.timeout),
                interval=seconds(hc.interval),
                # Replicas get checked at the same pace before the first request arrives.
                no_traffic_interval=seconds(hc.interval),
                unhealthy_threshold=wrappers_pb2.UInt32Value(value=hc.unhealthy_threshold),
                healthy_threshold=wrappers_pb2.UInt32Value(value=hc.healthy_threshold),
                grpc_health_check=health_check_pb2.HealthCheck.GrpcHealthCheck(service_name=hc.service_name),
            )
        ],
        # A replica dropped from the registry leaves rotation even if it still passes checks.
        ignore_health_on_host_removal=True,
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=wrappers_pb2.UInt32Value(value=od.consecutive_5xx),
            consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=od.consecutive_gateway_failure),
            # Envoy enforces gateway-failure ejection at 0% unless told otherwise.
            enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
            interval=seconds(1),
            base_ejection_time=seconds(od.base_ejection_time),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=od.max_ejection_percent),
        ),
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    priority=base_pb2.DEFAULT,
                    max_connections=wrappers_pb2.UInt32Value(value=cluster.max_requests),
                    max_pending_requests=wrappers_pb2.UInt32Value(value=cluster.max_requests),
                    max_requests=wrappers_pb2.UInt32Value(value=cluster.max_requests),
                    # Retries scale with load instead of Envoy's fixed 3 concurrent retries.
                    retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
                        budget_percent=percent_pb2.Percent(value=r.budget_percent),
                        min_retry_concurrency=wrappers_pb2.UInt32Value(value=r.min_retry_concurrency),
                    ),
                )
            ]
        ),
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            healthy_panic_threshold=percent_pb2.Percent(value=cluster.healthy_panic_threshold)
        ),
    )
    return out


def load_assignment(
    cluster_name: str, addrs: Iterable[tuple[str, int]]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints (IP, port) of one cluster, in one locality."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                            )
                        )
                    )
                    for host, port in addrs
                ]
            )
        ],
    )


def build_load_assignment(
    cluster: Cluster, instances: Sequence[Instance]
) -> endpoint_pb2.ClusterLoadAssignment:
    return load_assignment(cluster.name, ((i.host, i.port) for i in instances))


def build_clusters(config: GatewayConfig) -> list[cluster_pb2.Cluster]:
    keyed = config.keyed_clusters()
    out = []
    for c in config.clusters:
        out.append(build_cluster(c))
        if c.name in keyed:
            out.append(build_cluster(c, keyed=True))
    return out


def build_load_assignments(
    config: GatewayConfig, endpoints: Mapping[str, Sequence[Instance]]
) -> list[endpoint_pb2.ClusterLoadAssignment]:
    return [build_load_assignment(c, endpoints.get(c.service, ())) for c in config.clusters]
