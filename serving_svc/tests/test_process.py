"""`python -m serving_svc` as a real process: health, repository watching, limits, metrics."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlmesh import tensor
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc

from serving_svc.servicer import SERVICE_NAME
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import ServerProcess, copy_version, metric_value, serving_process, wait_for

pytestmark = pytest.mark.integration

MAX_MESSAGE = 1024 * 1024


@dataclass
class Served:
    process: ServerProcess
    repo: Path
    channel: grpc.Channel
    stub: serving_pb2_grpc.ServingServiceStub


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module, started on an empty repository; each test uses its own model names."""
    work = tmp_path_factory.mktemp("serving")
    repo = work / "repo"
    args = ["--model-repo", str(repo), "--poll-seconds", "0.2", "--max-batch-wait-ms", "20"]
    with serving_process(work, *args, "--max-message-bytes", str(MAX_MESSAGE)) as process:
        channel = grpc.insecure_channel(process.addr)
        try:
            yield Served(process, repo, channel, serving_pb2_grpc.ServingServiceStub(channel))
        finally:
            channel.close()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)


def request(model: str, x: np.ndarray) -> serving_pb2.PredictRequest:
    return serving_pb2.PredictRequest(model_name=model, inputs={"image": tensor.to_proto(x)})


def served_version(served: Served, model: str) -> int:
    """The version answering `model` now, 0 while it is NOT_FOUND."""
    try:
        return int(served.stub.Predict(request(model, images(1)), timeout=10).version)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return 0


def states(served: Served, model: str) -> dict[int, int]:
    status = served.stub.GetModelStatus(serving_pb2.GetModelStatusRequest(model_name=model), timeout=10)
    return {v.version: v.state for v in status.versions}


def test_serving_with_an_empty_repository_and_not_found_for_models(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", SERVICE_NAME):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        served.stub.Predict(request("absent", images(1)), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        served.stub.GetModelStatus(serving_pb2.GetModelStatusRequest(model_name="absent"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_exported_model_is_picked_up_and_answers_like_the_model(served: Served, exports: Exports) -> None:
    copy_version(exports.image_v1, served.repo, "fashion", 1)
    wait_for(lambda: served_version(served, "fashion") == 1, what="fashion v1 to be served")
    x = images(5, seed=3)
    response = served.stub.Predict(request("fashion", x), timeout=10)
    out = tensor.from_proto(response.outputs["probabilities"])
    np.testing.assert_allclose(out, exports.model_v1.predict(x), rtol=1e-5, atol=1e-6)


def test_new_version_replaces_the_old_one_which_ends(served: Served, exports: Exports) -> None:
    copy_version(exports.image_v1, served.repo, "rollout", 1)
    wait_for(lambda: served_version(served, "rollout") == 1, what="rollout v1")
    copy_version(exports.image_v2, served.repo, "rollout", 2)
    wait_for(lambda: served_version(served, "rollout") == 2, what="rollout v2 (a few poll periods)")
    wait_for(
        lambda: (
            states(served, "rollout")
            == {2: serving_pb2.MODEL_VERSION_STATE_AVAILABLE, 1: serving_pb2.MODEL_VERSION_STATE_END}
        ),
        what="v1 to reach END",
    )
    x = images(2, seed=4)
    out = tensor.from_proto(served.stub.Predict(request("rollout", x), timeout=10).outputs["probabilities"])
    np.testing.assert_allclose(out, exports.model_v2.predict(x), rtol=1e-5, atol=1e-6)


def test_partial_exports_are_ignored(served: Served, exports: Exports) -> None:
    model_dir = served.repo / "partial"
    model_dir.mkdir(parents=True)
    shutil.copytree(exports.image_v2, model_dir / ".tmp-export")  # still being written
    (model_dir / "5" / "variables").mkdir(parents=True)  # no saved_model.pb
    shutil.copytree(exports.image_v2, model_dir / "best")  # not a version number
    # A model added after them is loaded by a poll that also saw them.
    copy_version(exports.image_v1, served.repo, "sentinel", 1)
    wait_for(lambda: served_version(served, "sentinel") == 1, what="sentinel v1")
    assert states(served, "partial") == {}
    assert served_version(served, "partial") == 0
    copy_version(exports.image_v1, served.repo, "partial", 1)
    wait_for(lambda: served_version(served, "partial") == 1, what="partial v1")


def test_oversized_request_is_resource_exhausted(served: Served) -> None:
    big = np.zeros((400, 28, 28), np.float32)  # 1.25 MB > --max-message-bytes 1 MiB
    with pytest.raises(grpc.RpcError) as e:
        served.stub.Predict(request("fashion", big), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrent_clients_are_batched_and_counted_in_metrics(served: Served, exports: Exports) -> None:
    copy_version(exports.image_v1, served.repo, "batched", 1)
    wait_for(lambda: served_version(served, "batched") == 1, what="batched v1")
    before = served.process.metrics()
    n = 32
    x = images(n, seed=5)
    barrier = threading.Barrier(n)

    def one(i: int) -> np.ndarray:
        barrier.wait(10)
        response = served.stub.Predict(request("batched", x[i : i + 1]), timeout=30)
        return tensor.from_proto(response.outputs["probabilities"])

    with ThreadPoolExecutor(n) as pool:
        outputs = list(pool.map(one, range(n)))
    np.testing.assert_allclose(np.concatenate(outputs), exports.model_v1.predict(x), rtol=1e-5, atol=1e-6)
    after = served.process.metrics()

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, model="batched", **labels) - metric_value(
            before, name, model="batched", **labels
        )

    assert delta("mlmesh_serving_requests_total") == n
    calls = delta("mlmesh_serving_model_calls_total", outcome="ok")
    assert 0 < calls < n, f"{n} concurrent requests took {calls} model calls"
    assert delta("mlmesh_serving_batch_size_sum") == n
    assert metric_value(after, "mlmesh_serving_loaded_versions", model="batched") == 1
    assert metric_value(after, "mlmesh_serving_model_call_seconds_count", model="batched") > 0
