"""De-duplication and batching end to end: the real gateway (Envoy) in front of two
real serving replicas, tuned at run time through their admin service and the CLI.

Requests with `idempotency-key` are hashed on it (MAGLEV) so duplicates reach one
replica, which runs the model once; keyless requests go by least request. Counts
come from the replicas' own Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlmesh import tensor
from mlmesh.channels import sync_channel
from mlmesh.cli.suite import child_env
from mlmesh.serving.v1 import admin_pb2, admin_pb2_grpc, serving_pb2

from gateway.tests.conftest import REPO, Proc, ProcessGroup, serving_hosts_healthy, wait_until
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
    return serving_hosts_healthy(http(mesh.gateway.ports["admin_port"], "GET", "/clusters").body.decode())


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


def test_duplicates_reach_one_replica_and_keyless_requests_spread_over_both(mesh: Mesh) -> None:
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
    # Least request between two idle replicas is a coin toss per call: ~10/10, P(min < 3) = 4e-4.
    assert min(keyless) >= 3, keyless


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
    assert "idempotency key 'k-json'" in other.json()["error"]


def test_other_errors_keep_their_http_status(mesh: Mesh) -> None:
    key = {"idempotency-key": "k404"}
    r = http(mesh.port, "POST", "/v1/models/absent:predict", {"instances": [[1]]}, key)
    assert r.status == 404
    r = http(mesh.port, "POST", PREDICT, {"instances": [[1, 2]]}, {"idempotency-key": "k400"})
    assert r.status == 400
    assert sum(mesh.per_replica("mlmesh_serving_dedup_cache_entries")) >= 1


# -- batching knobs at run time ------------------------------------------------


def admin(addr: str) -> tuple[grpc.Channel, admin_pb2_grpc.ServingAdminServiceStub]:
    channel = sync_channel(addr)
    return channel, admin_pb2_grpc.ServingAdminServiceStub(channel)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **child_env(), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "mlmesh.cli.main", "serving", "batching", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def batching_of(addr: str) -> admin_pb2.BatchingParameters:
    channel, stub = admin(addr)
    with channel:
        answer = stub.GetBatching(admin_pb2.GetBatchingRequest(model_name=MODEL), timeout=10)
    (only,) = answer.models
    return only.parameters


@contextlib.contextmanager
def tuned(mesh: Mesh, tmp: Path, *pairs: str) -> Iterator[None]:
    """Apply `pairs` to both replicas with `mlmesh serving batching --root`, restore afterwards."""
    root = tmp / "suite"
    (root / "run").mkdir(parents=True, exist_ok=True)
    (root / "run" / "suite.json").write_text(json.dumps({"serving": [r.addr for r in mesh.replicas]}))
    before = [batching_of(r.addr) for r in mesh.replicas]
    done = cli("--root", str(root), "--model", MODEL, *(a for p in pairs for a in ("--set", p)))
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield
    finally:
        for replica, params in zip(mesh.replicas, before, strict=True):
            channel, stub = admin(replica.addr)
            with channel:
                stub.SetBatching(
                    admin_pb2.SetBatchingRequest(model_name=MODEL, parameters=params), timeout=10
                )


def test_admin_service_is_on_the_replica_with_health_but_not_behind_the_gateway(mesh: Mesh) -> None:
    service = "mlmesh.serving.v1.ServingAdminService"
    channel = sync_channel(mesh.replicas[0].addr)
    with channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel, stub = admin(f"127.0.0.1:{mesh.port}")
    with channel, pytest.raises(grpc.RpcError) as e:
        stub.GetBatching(admin_pb2.GetBatchingRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # TF Serving's config reload is an admin action too: answered on the replica, not the gateway.
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    reload = model_management_pb2.ReloadConfigRequest()
    for addr, code in (
        (f"127.0.0.1:{mesh.port}", grpc.StatusCode.UNIMPLEMENTED),
        (mesh.replicas[0].addr, None),
    ):
        with grpc.insecure_channel(addr) as ch, pytest.raises(grpc.RpcError) as e:
            model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(reload, timeout=10)
        # The replica itself answers (INVALID_ARGUMENT: the empty request has no config).
        assert e.value.code() == (code or grpc.StatusCode.INVALID_ARGUMENT), e.value.details()


def test_set_batching_validates_and_names_the_bad_field(mesh: Mesh) -> None:
    addr = mesh.replicas[0].addr
    before = batching_of(addr)
    bad = [
        (MODEL, admin_pb2.BatchingParameters(max_batch_size=0), "max_batch_size is 0; expected 1..65536"),
        (
            MODEL,
            admin_pb2.BatchingParameters(allowed_batch_sizes=admin_pb2.BatchSizes(sizes=[2, 4])),
            f"allowed_batch_sizes [2, 4] must end with max_batch_size ({before.max_batch_size}), not 4",
        ),
        ("", admin_pb2.BatchingParameters(num_batch_threads=-1), "num_batch_threads is -1; expected 1..64"),
        (MODEL, admin_pb2.BatchingParameters(), "parameters set no field"),
    ]
    channel, stub = admin(addr)
    with channel:
        for model, params, message in bad:
            with pytest.raises(grpc.RpcError) as e:
                stub.SetBatching(
                    admin_pb2.SetBatchingRequest(model_name=model, parameters=params), timeout=10
                )
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in str(e.value.details())
        with pytest.raises(grpc.RpcError) as e:
            stub.SetBatching(
                admin_pb2.SetBatchingRequest(
                    model_name="absent", parameters=admin_pb2.BatchingParameters(max_batch_size=4)
                ),
                timeout=10,
            )
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "model 'absent' is not loaded; loaded models: ['fashion']" in str(e.value.details())
    assert batching_of(addr) == before  # nothing changed


def test_cli_with_root_tunes_every_replica(mesh: Mesh, tmp_path: Path) -> None:
    with tuned(
        mesh, tmp_path, "max_batch_size=16", "allowed_batch_sizes=4,8,16", "batch_timeout_micros=3000"
    ):
        for replica in mesh.replicas:
            params = batching_of(replica.addr)
            assert (params.max_batch_size, params.batch_timeout_micros) == (16, 3000)
            assert list(params.allowed_batch_sizes.sizes) == [4, 8, 16]
        shown = cli("--target", mesh.replicas[1].addr, "--json")
        assert shown.returncode == 0, shown.stderr
        assert (
            json.loads(shown.stdout)[mesh.replicas[1].addr]["models"][0]["parameters"]["max_batch_size"]
            == "16"
        )
    bad = cli("--target", mesh.replicas[0].addr, "--set", "max_batch=3")
    assert bad.returncode == 1 and "unknown knob" in bad.stderr


def test_full_queue_is_429_through_the_gateway(mesh: Mesh, tmp_path: Path) -> None:
    # One batch of 4 may wait, for 1 s: per replica, a second 3-example request has no room.
    knobs = (
        "max_batch_size=4",
        "allowed_batch_sizes=",
        "max_enqueued_batches=1",
        "batch_timeout_micros=1000000",
    )
    body = {"instances": images(3, seed=7).tolist()}
    with tuned(mesh, tmp_path, *knobs), ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: http(mesh.port, "POST", PREDICT, body, timeout=30), range(6)))
    statuses = sorted(a.status for a in answers)
    assert statuses.count(429) >= 2 and statuses.count(200) >= 2, statuses
    refused = next(a for a in answers if a.status == 429).json()
    assert "the limit (max_enqueued_batches) is 1" in refused["error"]


def test_deadline_passing_in_the_queue_is_deadline_exceeded_without_a_model_call(
    mesh: Mesh, tmp_path: Path
) -> None:
    # The deadline leaves time to reach the queue on a loaded machine, and passes there.
    with tuned(mesh, tmp_path, "batch_timeout_micros=4000000"):
        before = calls(mesh)
        channel, stub = serving_stub(f"127.0.0.1:{mesh.port}")
        with channel, pytest.raises(grpc.RpcError) as e:
            stub.Predict(request(images(1, seed=8)), timeout=2.0)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        def expired() -> bool:
            return sum(mesh.per_replica("mlmesh_serving_deadline_expired_total", model=MODEL)) >= 1

        # Counted when its batch window (4 s after it reached the queue, which may be late on
        # a loaded machine) closes; by then the expired request must not have run.
        wait_until(expired, 15)
        assert calls(mesh) == before
        assert expired()
