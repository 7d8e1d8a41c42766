"""The rendered Envoy bootstrap: template rendering, cluster/route builders, and Envoy's own validation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from mlmesh.settings import load_settings

from gateway.config import GatewaySettings
from gateway.core.admin import read_admin_address
from gateway.core.backends import Backend
from gateway.core.bootstrap import (
    BootstrapInputs,
    RetryOptions,
    build_bootstrap,
    duration,
    load_template,
    render,
    serving_cluster,
    serving_route_config,
)
from gateway.server import (
    GatewayError,
    WorkFiles,
    envoy_command,
    exit_code_of,
    log_tail,
    prepare_work_dir,
    resolve_envoy_binary,
)

pytestmark = pytest.mark.unit

BACKENDS = (Backend("127.0.0.1", 8500), Backend("127.0.0.1", 8501))


def settings(tmp_path: Path, *args: str) -> GatewaySettings:
    return load_settings(
        GatewaySettings, ["--backends", "127.0.0.1:8500,127.0.0.1:8501", "--work-dir", str(tmp_path), *args]
    )


def hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_duration_format() -> None:
    assert [duration(1.0), duration(0.025), duration(0), duration(90.5)] == ["1s", "0.025s", "0s", "90.5s"]
    with pytest.raises(ValueError):
        duration(-1)


def test_render_substitutes_typed_values_and_drops_comments() -> None:
    tpl = {"//": "note", "a": "${n}", "b": ["${obj}", "plain"], "c": {"//x": 1, "d": "${n}"}}
    assert render(tpl, {"n": 7, "obj": {"k": [1]}}) == {"a": 7, "b": [{"k": [1]}, "plain"], "c": {"d": 7}}


def test_render_refuses_missing_unused_and_partial_placeholders() -> None:
    with pytest.raises(ValueError, match=r"placeholder \$\{port\} at \$\.a has no value"):
        render({"a": "${port}"}, {})
    with pytest.raises(ValueError, match=r"values \['extra'\] match no template placeholder"):
        render({"a": "${port}"}, {"port": 1, "extra": 2})
    with pytest.raises(ValueError, match="placeholders must be the whole string"):
        render({"a": "http://${host}"}, {"host": "x"})


def test_template_is_valid_json_with_known_placeholders() -> None:
    tpl = load_template()
    text = json.dumps(tpl)
    for name in [
        "node_id",
        "admin_host",
        "admin_port",
        "listen_host",
        "listen_port",
        "clusters",
        "route_config",
    ]:
        assert f'"${{{name}}}"' in text


def test_cluster_for_ip_backends_is_static_http2_with_grpc_health_checks() -> None:
    c = serving_cluster(BACKENDS)
    assert c["name"] == "serving" and c["type"] == "STATIC" and c["lb_policy"] == "ROUND_ROBIN"
    eps = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in eps] == [
        {"address": "127.0.0.1", "port_value": 8500},
        {"address": "127.0.0.1", "port_value": 8501},
    ]
    http2 = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http2["explicit_http_config"]
    (hc,) = c["health_checks"]
    assert hc["grpc_health_check"] == {"service_name": "mlmesh.serving.v1.ServingService"}
    assert (hc["interval"], hc["unhealthy_threshold"], hc["healthy_threshold"]) == ("1s", 2, 1)
    assert c["outlier_detection"]["enforcing_consecutive_gateway_failure"] == 100
    (limits,) = c["circuit_breakers"]["thresholds"]
    assert limits["max_retries"] >= 100  # Envoy's default of 3 lost requests under kill -9


def test_cluster_with_dns_names_is_strict_dns() -> None:
    assert serving_cluster([Backend("serving-svc", 8500)])["type"] == "STRICT_DNS"
    with pytest.raises(ValueError):
        serving_cluster([])


def test_tf_serving_grpc_services_route_to_the_serving_cluster_like_ours() -> None:
    _, reload, ours_keyed, ours, *tfs = serving_route_config()["virtual_hosts"][0]["routes"]
    # Except the admin method that rewrites the model config: not on the public listener.
    assert reload == {
        "match": {"path": "/tensorflow.serving.ModelService/HandleReloadConfigRequest"},
        "direct_response": {"status": 404},
    }
    keyed, plain = tfs[0::2], tfs[1::2]
    assert [r["match"] for r in plain] == [
        {"prefix": "/tensorflow.serving.PredictionService/", "grpc": {}},
        {"prefix": "/tensorflow.serving.ModelService/", "grpc": {}},
    ]
    assert all(r["route"] == ours["route"] for r in plain)
    # Requests with an idempotency key are hashed to one replica on every API.
    assert all(r["route"] == ours_keyed["route"] for r in keyed)
    assert all(r["match"]["headers"] == ours_keyed["match"]["headers"] for r in keyed)


def test_route_honours_client_deadlines_and_retries_on_other_hosts() -> None:
    rc = serving_route_config(RetryOptions(per_try_timeout_seconds=0.5))
    healthz, _reload, _keyed, grpc_route, *_ = rc["virtual_hosts"][0]["routes"]
    assert healthz["match"] == {"path": "/healthz"} and healthz["direct_response"]["status"] == 200
    assert grpc_route["match"] == {"prefix": "/mlmesh.serving.v1.ServingService/", "grpc": {}}
    route = grpc_route["route"]
    assert route["cluster"] == "serving"
    assert route["timeout"] == "0s"
    assert route["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
    retry = route["retry_policy"]
    assert retry["retry_on"] == "unavailable,reset,connect-failure,refused-stream"
    assert retry["num_retries"] == 2
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert retry["per_try_timeout"] == "0.5s"
    assert (
        "per_try_timeout"
        not in serving_route_config()["virtual_hosts"][0]["routes"][-1]["route"]["retry_policy"]
    )


def test_bootstrap_wires_listener_transcoder_and_admin(tmp_path: Path) -> None:
    b = build_bootstrap(
        BootstrapInputs(
            node_id="n",
            listen_host="127.0.0.1",
            listen_port=0,
            admin_host="127.0.0.1",
            admin_port=0,
            descriptor_path=tmp_path / "serving.pb",
            max_body_bytes=1 << 26,
            backends=BACKENDS,
        )
    )
    assert b["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}
    listener = b["static_resources"]["listeners"][0]
    assert listener["enable_reuse_port"] is False
    h = hcm(b)
    assert h["codec_type"] == "AUTO"
    lua, transcoder, router = h["http_filters"]
    assert lua["name"] == "envoy.filters.http.lua"  # FAILED_PRECONDITION -> 422 (test_dedup_gateway)
    assert router["name"] == "envoy.filters.http.router"
    tc = transcoder["typed_config"]
    assert tc["proto_descriptor"] == str(tmp_path / "serving.pb")
    assert tc["services"] == ["mlmesh.serving.v1.ServingService"]
    assert tc["convert_grpc_status"] is True and tc["match_incoming_request_route"] is False
    assert tc["print_options"] == {"always_print_primitive_fields": True, "preserve_proto_field_names": True}
    assert tc["max_request_body_size"] == tc["max_response_body_size"] == 1 << 26
    assert h["access_log"] == []
    assert "//" not in json.dumps(b)


def test_prepare_work_dir_writes_descriptor_and_bootstrap(tmp_path: Path) -> None:
    s = settings(tmp_path / "w", "--access-log", "true", "--max-message-bytes", "2097152")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "admin_address").write_text("127.0.0.1:1")  # stale, from an earlier run
    files = prepare_work_dir(s)
    fds = descriptor_pb2.FileDescriptorSet.FromString(files.descriptor.read_bytes())
    names = [f.name for f in fds.file]
    assert names[-1] == "mlmesh/serving/v1/serving.proto"
    assert "google/api/annotations.proto" in names
    b = json.loads(files.config.read_text())
    assert hcm(b)["access_log"][0]["typed_config"]["path"] == str(files.access_log)
    assert hcm(b)["http_filters"][1]["typed_config"]["max_request_body_size"] == 2097152
    assert not files.admin_address.exists()
    assert not list(files.config.parent.glob(".*.tmp"))


def test_lb_policy_setting_picks_the_keyless_clusters_policy_and_keyed_stays_maglev(tmp_path: Path) -> None:
    for policy in ("ROUND_ROBIN", "LEAST_REQUEST"):
        files = prepare_work_dir(settings(tmp_path / policy, "--lb-policy", policy))
        clusters = json.loads(files.config.read_text())["static_resources"]["clusters"]
        assert {c["name"]: c["lb_policy"] for c in clusters} == {"serving": policy, "serving_keyed": "MAGLEV"}
    with pytest.raises(SystemExit):
        settings(tmp_path / "bad", "--lb-policy", "FASTEST")


def test_rendered_bootstrap_passes_envoy_validation(tmp_path: Path) -> None:
    # Envoy itself parses every field: catches typos no dict assertion would.
    s = settings(tmp_path, "--access-log", "true", "--per-try-timeout-seconds", "2")
    files = prepare_work_dir(s)
    binary = resolve_envoy_binary(None)
    out = subprocess.run(
        [str(binary), "--mode", "validate", "-c", str(files.config), "-l", "error", "--base-id", "4000001"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


def test_dns_bootstrap_passes_envoy_validation(tmp_path: Path) -> None:
    s = load_settings(GatewaySettings, ["--backends", "localhost:8500", "--work-dir", str(tmp_path)])
    files = prepare_work_dir(s)
    out = subprocess.run(
        [str(resolve_envoy_binary(None)), "--mode", "validate", "-c", str(files.config), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_envoy_command_carries_base_id_concurrency_and_admin_path(tmp_path: Path) -> None:
    s = settings(tmp_path, "--concurrency", "2", "--grace-seconds", "2.5")
    files = WorkFiles.under(tmp_path)
    cmd = envoy_command(Path("/bin/envoy"), files, s, base_id=77)
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert cmd[0] == "/bin/envoy"
    assert flags["-c"] == str(files.config)
    assert flags["--base-id"] == "77"
    assert flags["--concurrency"] == "2"
    assert flags["--admin-address-path"] == str(files.admin_address)
    assert flags["--log-level"] == "warning"
    assert flags["--drain-time-s"] == "3"


def test_missing_envoy_binary_is_a_gateway_error(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="does not exist or is not executable"):
        resolve_envoy_binary(tmp_path / "no-envoy")


def test_read_admin_address(tmp_path: Path) -> None:
    path = tmp_path / "admin"
    assert read_admin_address(path) is None
    path.write_text("127.0.0.1:")
    assert read_admin_address(path) is None
    path.write_text("127.0.0.1:9901\n")
    assert read_admin_address(path) == ("127.0.0.1", 9901)


def test_log_tail_and_exit_codes(tmp_path: Path) -> None:
    log = tmp_path / "envoy.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 2) == "line 98\nline 99"
    assert log_tail(tmp_path / "none") == ""
    assert (exit_code_of(0), exit_code_of(1), exit_code_of(-9)) == (0, 1, 137)


def test_unwritable_work_dir_is_a_gateway_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(GatewayError, match="cannot create work_dir"):
        prepare_work_dir(settings(blocker / "w"))
