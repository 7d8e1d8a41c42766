"""What the control plane tells Envoy: the resources built from the shipped config, and the
bootstrap that names only the control plane (checked by Envoy's own validation)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2
from mlmesh.descriptors import serving_descriptor_set
from mlmesh.discovery import Instance

from gateway.core.backends import Backend
from gateway.server import resolve_envoy_binary
from gateway.tests.conftest import listener_of, write_config
from gateway.xds import resources as rs
from gateway.xds.bootstrap import build_xds_bootstrap
from gateway.xds.config import DEFAULT_CONFIG_PATH, GatewayConfig, load_config
from gateway.xds.resources import static_http_filter
from gateway.xds.snapshot import build_snapshot

pytestmark = pytest.mark.unit

CONFIG = load_config(DEFAULT_CONFIG_PATH)
SERVING = (Instance("serving", "127.0.0.1", 8500), Instance("serving", "127.0.0.1", 8501))


def unpack(a: any_pb2.Any, cls: type[Any]) -> Any:
    out = cls()
    assert a.Unpack(out), a.type_url
    return out


def clusters(config: GatewayConfig = CONFIG) -> dict[str, cluster_pb2.Cluster]:
    return {c.name: c for c in rs.build_clusters(config)}


def routes(listener: str, config: GatewayConfig = CONFIG) -> list[Any]:
    x = next(x for x in config.listeners if x.name == listener)
    return list(rs.build_routes(config, x).virtual_hosts[0].routes)


def hcm(listener: str, config: GatewayConfig = CONFIG) -> hcm_pb2.HttpConnectionManager:
    x = next(x for x in config.listeners if x.name == listener)
    built = rs.build_listener(x, descriptor_set=b"fds", admin_token="t" * 20)
    return unpack(built.filter_chains[0].filters[0].typed_config, hcm_pb2.HttpConnectionManager)


def test_clusters_are_eds_with_health_checks_outliers_and_a_retry_budget() -> None:
    built = clusters()
    assert set(built) == {"serving", "serving_keyed", "ingest", "trainer"}
    serving = built["serving"]
    assert serving.type == cluster_pb2.Cluster.EDS
    assert serving.eds_cluster_config.service_name == "serving"
    assert built["serving_keyed"].eds_cluster_config.service_name == "serving"  # one assignment, two clusters
    assert serving.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert built["serving_keyed"].lb_policy == cluster_pb2.Cluster.MAGLEV
    assert serving.ignore_health_on_host_removal
    (hc,) = serving.health_checks
    assert hc.grpc_health_check.service_name == "mlmesh.serving.v1.ServingService"
    assert built["ingest"].health_checks[0].grpc_health_check.service_name == "mlmesh.ingest.v1.IngestService"
    assert serving.outlier_detection.enforcing_consecutive_gateway_failure.value == 100
    (limits,) = serving.circuit_breakers.thresholds
    # A budget instead of Envoy's fixed 3 concurrent retries (63 failed of 2000 under kill -9).
    assert not limits.HasField("max_retries")
    assert (limits.retry_budget.budget_percent.value, limits.retry_budget.min_retry_concurrency.value) == (
        25,
        10,
    )


def test_prediction_routes_hash_on_the_idempotency_key_to_the_maglev_twin() -> None:
    by_name = {r.name: r for r in routes("ingress")}
    keyed, plain = by_name["serving-predict-keyed"], by_name["serving-predict"]
    assert keyed.match.prefix == plain.match.prefix == "/mlmesh.serving.v1.ServingService/"
    assert keyed.match.headers[0].name == "idempotency-key" and keyed.match.headers[0].present_match
    assert keyed.route.cluster == "serving_keyed" and plain.route.cluster == "serving"
    assert keyed.route.hash_policy[0].header.header_name == "idempotency-key"
    assert not plain.route.hash_policy
    order = [r.name for r in routes("ingress")]
    assert order.index("serving-predict-keyed") < order.index("serving-predict")
    # Status methods match exactly, before the service prefix, and are not keyed.
    assert order.index("serving-status") < order.index("serving-predict-keyed")
    assert "serving-status-keyed" not in order and "tfs-status-keyed" not in order


def test_routes_honour_client_deadlines_and_retry_on_other_hosts() -> None:
    for r in routes("ingress") + routes("internal"):
        if r.HasField("direct_response"):
            continue
        assert r.match.HasField("grpc"), r.name
        assert r.route.timeout.ToNanoseconds() == 0
        assert r.route.max_stream_duration.grpc_timeout_header_max.ToNanoseconds() == 0
        assert (
            r.route.retry_policy.retry_host_predicate[0].name == "envoy.retry_host_predicates.previous_hosts"
        )
    predict = next(r for r in routes("ingress") if r.name == "serving-predict")
    assert predict.route.retry_policy.retry_on == "unavailable,reset,connect-failure,refused-stream"
    admin = next(r for r in routes("internal") if r.name == "ingest-writes")
    assert admin.route.retry_policy.retry_on == "connect-failure,refused-stream"  # writes: never twice


def test_public_listener_transcodes_json_and_keeps_the_static_paths_lua() -> None:
    h = hcm("ingress")
    assert h.stat_prefix == "ingress_http"  # the launcher's drain reads http.ingress_http.*
    assert h.rds.route_config_name == "ingress" and h.rds.config_source.HasField("ads")
    names = [f.name for f in h.http_filters]
    assert names == [
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]
    lua = unpack(h.http_filters[0].typed_config, lua_pb2.Lua)
    static = static_http_filter("envoy.filters.http.lua")  # one source for both modes
    assert lua.default_source_code.inline_string == static["default_source_code"]["inline_string"]
    assert "envoy_on_response" in lua.default_source_code.inline_string
    tc = unpack(h.http_filters[1].typed_config, transcoder_pb2.GrpcJsonTranscoder)
    assert tc.proto_descriptor_bin == b"fds" and list(tc.services) == ["mlmesh.serving.v1.ServingService"]
    assert tc.convert_grpc_status and not tc.match_incoming_request_route
    assert tc.max_request_body_size.value == tc.max_response_body_size.value == 64 << 20


def test_internal_listener_checks_the_bearer_token_and_has_no_transcoder() -> None:
    h = hcm("internal")
    assert [f.name for f in h.http_filters] == ["envoy.filters.http.lua", "envoy.filters.http.router"]
    source = unpack(h.http_filters[0].typed_config, lua_pb2.Lua).default_source_code.inline_string
    assert "local expected = 'Bearer " + "t" * 20 + "'" in source
    assert "local expected = nil" in rs.admin_auth_lua(None)  # no token: every admin request refused


def test_rate_limits_become_a_listener_bucket_and_per_route_buckets(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        ingress = listener_of(d, "ingress")
        ingress["limits"]["rate_limit"] = {"requests": 100, "per": "1s", "burst": 200}
        ingress["routes"][1]["rate_limit"] = {"requests": 5, "per": "2s"}

    config = load_config(write_config(tmp_path / "g.yaml", edit))
    h = hcm("ingress", config)
    assert h.http_filters[0].name == "envoy.filters.http.local_ratelimit"
    bucket = unpack(h.http_filters[0].typed_config, local_rate_limit_pb2.LocalRateLimit)
    assert bucket.rate_limited_as_resource_exhausted  # gRPC: RESOURCE_EXHAUSTED, not UNAVAILABLE
    tb = bucket.token_bucket
    assert (tb.max_tokens, tb.tokens_per_fill.value, tb.fill_interval.seconds) == (200, 100, 1)
    limited = next(r for r in routes("ingress", config) if r.name == "serving-status")
    per_route = unpack(
        limited.typed_per_filter_config["envoy.filters.http.local_ratelimit"],
        local_rate_limit_pb2.LocalRateLimit,
    )
    assert (per_route.token_bucket.max_tokens, per_route.token_bucket.fill_interval.seconds) == (5, 2)


def test_snapshot_versions_are_content_hashes() -> None:
    def snap(endpoints: dict[str, tuple[Instance, ...]]) -> Any:
        return build_snapshot(1, CONFIG, endpoints, descriptor_set=b"fds", admin_token=None)

    a, b = snap({"serving": SERVING}), snap({"serving": SERVING})
    for type_url, names in ((rs.CLUSTER_TYPE, ()), (rs.ENDPOINT_TYPE, ("serving",)), (rs.LISTENER_TYPE, ())):
        assert a.select(type_url, names)[1] == b.select(type_url, names)[1]  # a restart offers the same
    c = snap({"serving": SERVING[:1]})
    assert c.select(rs.ENDPOINT_TYPE, ("serving",))[1] != a.select(rs.ENDPOINT_TYPE, ("serving",))[1]
    assert c.select(rs.CLUSTER_TYPE, ())[1] == a.select(rs.CLUSTER_TYPE, ())[1]
    ports = (("ingress", 8080),)
    ingress = unpack(a.select(rs.LISTENER_TYPE, (), ports)[0][0], listener_pb2.Listener)
    assert (ingress.name, ingress.address.socket_address.port_value) == ("ingress", 8080)
    (rc,) = a.select(rs.ROUTE_TYPE, ("internal", "absent"))[0]
    assert unpack(rc, route_pb2.RouteConfiguration).name == "internal"


def test_xds_bootstrap_names_only_the_control_plane_and_passes_envoy_validation(tmp_path: Path) -> None:
    b = build_xds_bootstrap(
        node_id="n",
        admin_host="127.0.0.1",
        admin_port=0,
        xds=Backend("127.0.0.1", 18000),
        listener_ports={"ingress": 8080, "internal": 0},
    )
    assert [c["name"] for c in b["static_resources"]["clusters"]] == ["xds"]
    assert "listeners" not in b["static_resources"]
    assert b["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] == "xds"
    assert b["node"]["metadata"] == {"listener_ports": {"ingress": 8080, "internal": 0}}
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(b))
    out = subprocess.run(
        [
            str(resolve_envoy_binary(None)),
            "--mode",
            "validate",
            "-c",
            str(path),
            "-l",
            "error",
            "--base-id",
            "4000021",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_real_descriptor_set_fits_in_the_listener() -> None:
    x = CONFIG.listeners[0]
    built = rs.build_listener(x, descriptor_set=serving_descriptor_set(), admin_token=None)
    assert built.ByteSize() < 64 * 1024  # inline, no file shared with Envoy
