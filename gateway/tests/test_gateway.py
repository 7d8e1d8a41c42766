"""The gateway end to end: real Envoy in front of two real ServingService replicas."""

from __future__ import annotations

import time
from collections import Counter

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.serving.v1 import serving_pb2

from gateway.tests.conftest import Mesh, wait_until
from gateway.tests.http_util import header, http, serving_stub

pytestmark = pytest.mark.integration

PREDICT = "/v1/models/m:predict"


def test_json_predict_answers_200_with_predictions(mesh: Mesh) -> None:
    r = http(mesh.http_port, "POST", PREDICT, {"instances": [[1, 2], [3, 4]]})
    assert r.status == 200, r.body
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"predictions": [[2, 4], [6, 8]]}  # TF Serving's answer, nothing else


def test_json_model_status(mesh: Mesh) -> None:
    r = http(mesh.http_port, "GET", "/v1/models/m")
    assert r.status == 200, r.body
    assert r.json() == {  # TF Serving's GetModelStatusResponse JSON; int64 is a string in proto3 JSON
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def test_json_unknown_model_is_404_with_tf_serving_error_body(mesh: Mesh) -> None:
    r = http(mesh.http_port, "POST", "/v1/models/missing:predict", {"instances": [[1]]})
    assert r.status == 404
    body = r.json()
    assert list(body) == ["error"]  # TF Serving's REST error shape: {"error": "<message>"}
    assert "missing" in body["error"]


def test_json_status_of_unknown_model_is_404(mesh: Mesh) -> None:
    r = http(mesh.http_port, "GET", "/v1/models/missing")
    assert r.status == 404
    assert "missing" in r.json()["error"]


def test_malformed_json_is_400(mesh: Mesh) -> None:
    # Predict/classify/regress bodies pass through raw (HttpBody): the replica parses them.
    r = http(mesh.http_port, "POST", PREDICT, b'{"instances": [[1, 2]', {"content-type": "application/json"})
    assert r.status == 400
    assert r.json() == {"error": "request body is not a JSON object"}


def test_invalid_argument_from_replica_is_400_with_its_message(mesh: Mesh) -> None:
    r = http(mesh.http_port, "POST", PREDICT, {"instances": ["not-a-list"]})
    assert r.status == 400
    assert r.json() == {"error": "instance 0 is str, expected a list of numbers"}


def test_request_without_inputs_is_400(mesh: Mesh) -> None:
    r = http(mesh.http_port, "POST", PREDICT, {})
    assert r.status == 400
    assert r.json() == {"error": "request has neither inputs nor instances"}


def test_unknown_path_is_404(mesh: Mesh) -> None:
    assert http(mesh.http_port, "GET", "/v2/nothing-here").status == 404


def test_healthz_answers_from_envoy(mesh: Mesh) -> None:
    r = http(mesh.http_port, "GET", "/healthz")
    assert (r.status, r.body) == (200, b"ok\n")


def test_large_json_body_is_transcoded(mesh: Mesh) -> None:
    # ~2.4 MB of JSON: above Envoy's default 1 MiB buffer, below max_message_bytes.
    row = list(range(1_000_000, 1_300_000))
    r = http(mesh.http_port, "POST", PREDICT, {"instances": [row]}, timeout=30)
    assert r.status == 200, r.body[:300]
    assert r.json()["predictions"][0][-1] == 2 * row[-1]


def test_grpc_predict_through_gateway_equals_direct_call(mesh: Mesh) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    request = serving_pb2.PredictRequest(model_name="m", inputs={"x": tensor.to_proto(x)})
    via_gw, gw = serving_stub(f"127.0.0.1:{mesh.http_port}")
    direct, backend = serving_stub(mesh.backends[0].addr)
    with via_gw, direct:
        through = gw.Predict(request, timeout=5)
        expected = backend.Predict(request, timeout=5)
    assert through == expected
    np.testing.assert_array_equal(tensor.from_proto(through.outputs["x"]), x.astype(np.float64) * 2)


def test_grpc_errors_keep_code_and_message_through_gateway(mesh: Mesh) -> None:
    channel, stub = serving_stub(f"127.0.0.1:{mesh.http_port}")
    with channel:
        with pytest.raises(grpc.RpcError) as missing:
            stub.Predict(serving_pb2.PredictRequest(model_name="missing"), timeout=5)
        with pytest.raises(grpc.RpcError) as empty:
            stub.Predict(serving_pb2.PredictRequest(model_name="m"), timeout=5)
        with pytest.raises(grpc.RpcError) as no_name:
            stub.GetModelStatus(serving_pb2.GetModelStatusRequest(), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "model 'missing' not found; available: ['m']"
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert empty.value.details() == "request has neither inputs nor instances"
    assert no_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def healthy_replicas(mesh: Mesh) -> str:
    """Envoy's view of the serving hosts, e.g. 'serving::127.0.0.1:1::health_flags::healthy' lines."""
    body = http(mesh.gateway.ports["admin_port"], "GET", "/clusters").body.decode()
    return "\n".join(
        line for line in body.splitlines() if line.startswith("serving::") and "::health_flags::" in line
    )


def test_keyless_requests_spread_over_both_replicas(mesh: Mesh) -> None:
    # On a starved machine a replica can miss health checks for a moment; judge balance only when both are in.
    assert wait_until(lambda: healthy_replicas(mesh).count("::healthy") == 2, 10), healthy_replicas(mesh)
    request = serving_pb2.PredictRequest(model_name="m", inputs={"x": tensor.to_proto(np.ones(2))})
    seen: Counter[str | None] = Counter()
    channel, stub = serving_stub(f"127.0.0.1:{mesh.http_port}")
    with channel:
        for _ in range(20):
            _, call = stub.Predict.with_call(request, timeout=5)
            seen[header(call.initial_metadata(), "x-replica-id")] += 1
    assert set(seen) == {"r0", "r1"}
    # Least request picks the less busy of two random hosts; sequential calls tie, so ~10/10
    # with binomial spread (P(min < 3) is 4e-4).
    assert min(seen.values()) >= 3, (seen, healthy_replicas(mesh))


def test_json_requests_are_balanced_too(mesh: Mesh) -> None:
    seen = Counter(
        http(mesh.http_port, "POST", PREDICT, {"instances": [[1]]}).headers.get("x-replica-id")
        for _ in range(10)
    )
    assert set(seen) == {"r0", "r1"}


def test_client_deadline_is_enforced_through_gateway(mesh: Mesh) -> None:
    request = serving_pb2.PredictRequest(model_name="m")
    request.instances.add_list().append(1)
    channel, stub = serving_stub(f"127.0.0.1:{mesh.http_port}")
    with channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=0.5, metadata=(("x-test-delay-ms", "3000"),))
        elapsed = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.5


def test_client_deadline_reaches_replica_and_envoy_adds_no_timeout(mesh: Mesh) -> None:
    # With Envoy's default route timeout the replica would see x-envoy-expected-rq-timeout-ms: 15000
    # and calls would be cut at 15 s whatever the client's deadline.
    request = serving_pb2.GetModelStatusRequest(model_name="m")
    channel, stub = serving_stub(f"127.0.0.1:{mesh.http_port}")
    with channel:
        _, with_deadline = stub.GetModelStatus.with_call(request, timeout=60)
        _, without_deadline = stub.GetModelStatus.with_call(request)
    remaining_ms = int(header(with_deadline.trailing_metadata(), "x-deadline-remaining-ms") or -1)
    assert 50_000 < remaining_ms <= 61_000  # grpc-timeout is encoded rounded up
    for call in (with_deadline, without_deadline):
        assert header(call.trailing_metadata(), "x-envoy-expected-rq-timeout-ms") is None


def test_json_grpc_timeout_header_is_honoured(mesh: Mesh) -> None:
    started = time.monotonic()
    r = http(
        mesh.http_port,
        "POST",
        PREDICT,
        {"instances": [[1]]},
        headers={"grpc-timeout": "300m", "x-test-delay-ms": "3000"},
    )
    elapsed = time.monotonic() - started
    assert r.status == 504  # DEADLINE_EXCEEDED, from Envoy or the replica, whichever notices first
    assert elapsed < 1.5


def test_slow_request_without_deadline_completes(mesh: Mesh) -> None:
    r = http(mesh.http_port, "POST", PREDICT, {"instances": [[1]]}, headers={"x-test-delay-ms": "700"})
    assert r.status == 200
    assert r.json()["predictions"] == [[2]]


def test_port_file_reports_admin_as_metrics_endpoint(mesh: Mesh) -> None:
    ports = mesh.gateway.ports
    assert set(ports) == {"port", "internal_port", "admin_port", "metrics_port", "pid", "envoy_pid"}
    assert ports["metrics_port"] == ports["admin_port"]
    assert ports["pid"] == mesh.gateway.popen.pid
    r = http(ports["admin_port"], "GET", "/stats/prometheus")
    assert r.status == 200
    assert b'envoy_cluster_upstream_rq_total{envoy_cluster_name="serving"}' in r.body


def test_both_replicas_pass_grpc_health_checks(mesh: Mesh) -> None:
    for backend in mesh.backends:
        assert wait_until(
            lambda b=backend: f"serving::{b.addr}::health_flags::healthy" in healthy_replicas(mesh), 10
        )
