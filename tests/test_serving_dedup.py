"""De-duplication end to end: the real gateway (Envoy) in front of two real serving replicas.

Requests with `idempotency-key` are hashed on it (MAGLEV) so duplicates reach one
replica, which runs the model once; keyless requests stay round robin. Counts
come from the replicas' own Prometheus metrics.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.serving.v1 import serving_pb2

from gateway.tests.conftest import Proc, ProcessGroup, wait_until
from gateway.tests.http_util import http, serving_stub
from serving_svc.tests.helpers import ImageModel, export, metric_value

pytestmark = pytest.mark.integration

MODEL = "fashion"
PREDICT = f"/v1/models/{MODEL}:predict"


@dataclass
class Mesh:
    replicas: list[Proc]
    gateway: Proc

    @property
    def port(self) -> int:
        return self.gateway.ports["port"]

    def metrics(self) -> list[str]:
        texts = []
        for r in self.replicas:
            url = f"http://127.0.0.1:{r.ports['metrics_port']}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                texts.append(resp.read().decode())
        return texts

    def per_replica(self, name: str, **labels: str) -> list[float]:
        return [metric_value(text, name, **labels) for text in self.metrics()]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("dedup")
    export(ImageModel(seed=1), work / "repo", MODEL, 1)
    group = ProcessGroup(work)
    try:
        args = ["-m", "serving_svc", "--model-repo", str(work / "repo"), "--port", "0", "--metrics-port", "0"]
        # A longer batch window: all ten duplicates arrive while the first is still queued.
        args += ["--max-batch-wait-ms", "20", "--dedup-ttl-seconds", "30"]
        replicas = [group.spawn(f"serving-{i}", args, timeout=120) for i in range(2)]
        gateway = group.gateway("gw", replicas)
        mesh = Mesh(replicas, gateway)
        assert wait_until(lambda: healthy(mesh) == 4, 15), "both replicas healthy in both clusters"
        yield mesh
    finally:
        group.close()


def healthy(mesh: Mesh) -> int:
    body = http(mesh.gateway.ports["admin_port"], "GET", "/clusters").body.decode()
    return sum(1 for line in body.splitlines() if line.endswith("::health_flags::healthy"))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.float32)


def request(x: np.ndarray) -> serving_pb2.PredictRequest:
    return serving_pb2.PredictRequest(model_name=MODEL, inputs={"image": tensor.to_proto(x)})


def calls(mesh: Mesh) -> float:
    return sum(mesh.per_replica("mlmesh_serving_model_calls_total", model=MODEL, outcome="ok"))


def predicts(mesh: Mesh) -> list[float]:
    return mesh.per_replica("mlmesh_grpc_requests_total", method="Predict", code="OK")


def test_ten_concurrent_duplicates_through_the_gateway_run_the_model_once(mesh: Mesh) -> None:
    before, hits_before = calls(mesh), sum(mesh.per_replica("mlmesh_serving_dedup_hits_total"))
    channel, stub = serving_stub(f"127.0.0.1:{mesh.port}")
    barrier = threading.Barrier(10)
    req = request(images(1, seed=1))

    def one(_: int) -> serving_pb2.PredictResponse:
        barrier.wait(10)
        return stub.Predict(req, timeout=30, metadata=(("idempotency-key", "order-42"),))

    with channel, ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(10)))
    assert all(a == answers[0] for a in answers)
    assert calls(mesh) - before == 1
    assert sum(mesh.per_replica("mlmesh_serving_dedup_hits_total")) - hits_before == 9


def test_duplicates_reach_one_replica_and_keyless_requests_stay_round_robin(mesh: Mesh) -> None:
    channel, stub = serving_stub(f"127.0.0.1:{mesh.port}")
    with channel:
        start = predicts(mesh)
        for _ in range(6):
            stub.Predict(request(images(1, seed=2)), timeout=30, metadata=(("idempotency-key", "same"),))
        keyed = [b - a for a, b in zip(start, predicts(mesh), strict=True)]
        start = predicts(mesh)
        for i in range(20):
            stub.Predict(request(images(1, seed=100 + i)), timeout=30)
        keyless = [b - a for a, b in zip(start, predicts(mesh), strict=True)]
    assert sorted(keyed) == [0, 6]
    assert min(keyless) >= 7, keyless  # round robin gives 10/10; allow a health-check blip


def test_same_key_with_another_payload_is_failed_precondition_over_grpc(mesh: Mesh) -> None:
    channel, stub = serving_stub(f"127.0.0.1:{mesh.port}")
    with channel:
        stub.Predict(request(images(1, seed=3)), timeout=30, metadata=(("idempotency-key", "k-grpc"),))
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request(images(1, seed=4)), timeout=30, metadata=(("idempotency-key", "k-grpc"),))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "idempotency key 'k-grpc' was already used for a different request" in str(e.value.details())


def test_json_key_header_reaches_the_replica_replays_and_mismatch_is_422(mesh: Mesh) -> None:
    body = {"instances": images(1, seed=5).tolist()}
    headers = {"idempotency-key": "k-json"}
    replayed_before = sum(mesh.per_replica("mlmesh_serving_dedup_hits_total", kind="replayed"))
    calls_before = calls(mesh)
    first = http(mesh.port, "POST", PREDICT, body, headers=headers, timeout=30)
    again = http(mesh.port, "POST", PREDICT, body, headers=headers, timeout=30)
    assert first.status == again.status == 200, first.body[:300]
    assert first.json() == again.json()
    assert calls(mesh) - calls_before == 1
    assert sum(mesh.per_replica("mlmesh_serving_dedup_hits_total", kind="replayed")) - replayed_before == 1

    other = http(mesh.port, "POST", PREDICT, {"instances": images(1, seed=6).tolist()}, headers=headers)
    assert other.status == 422, other.body[:300]
    assert other.json()["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "idempotency key 'k-json'" in other.json()["message"]


def test_other_errors_keep_their_http_status(mesh: Mesh) -> None:
    key = {"idempotency-key": "k404"}
    r = http(mesh.port, "POST", "/v1/models/absent:predict", {"instances": [[1]]}, key)
    assert r.status == 404
    r = http(mesh.port, "POST", PREDICT, {"instances": [[1, 2]]}, {"idempotency-key": "k400"})
    assert r.status == 400
    assert sum(mesh.per_replica("mlmesh_serving_dedup_cache_entries")) >= 1
