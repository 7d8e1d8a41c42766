"""The server's interceptors over a real gRPC channel: de-duplication on the predict
methods (mlmesh's and TF Serving's, by name) and content hashing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.server import server_options
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc
from prometheus_client import REGISTRY
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2, prediction_service_pb2_grpc

from serving_svc.config import ServingSettings
from serving_svc.interceptors import DEFAULT_METHODS
from serving_svc.server import build, interceptors
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import LoopThread, copy_version

pytestmark = pytest.mark.unit


class CountingPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Stands in for helper B's TF Serving servicer (not on this branch): the interceptor
    only needs a handler registered under TF Serving's method name."""

    def __init__(self) -> None:
        self.calls = 0

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        self.calls += 1
        if request.model_spec.name == "slow-missing":
            await asyncio.sleep(0.2)  # long enough for duplicates to join it
            await context.abort(grpc.StatusCode.NOT_FOUND, "model 'slow-missing' is not available")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        return response


class Served:
    def __init__(self, channel: grpc.Channel, tfs: CountingPredictionService) -> None:
        self.stub = serving_pb2_grpc.ServingServiceStub(channel)
        self.tfs_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.tfs = tfs


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, exports: Exports) -> Iterator[Served]:
    repo: Path = tmp_path_factory.mktemp("repo")
    copy_version(exports.image_v1, repo, "dedup", 1)
    settings = ServingSettings(model_repo=repo, dedup_content_hash=True, dedup_ttl_seconds=60)
    loop = LoopThread()
    manager, servicer = build(settings)
    tfs = CountingPredictionService()
    servers: list[grpc.aio.Server] = []

    async def start() -> int:
        server = grpc.aio.server(options=server_options(settings), interceptors=interceptors(settings))
        servers.append(server)
        serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, server)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(tfs, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await manager.start()
        return port

    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{loop.run(start())}")
        with channel:
            yield Served(channel, tfs)
    finally:
        for server in servers:
            loop.run(server.stop(0))
        loop.run(manager.stop())
        loop.close()


def calls() -> float:
    return (
        REGISTRY.get_sample_value("mlmesh_serving_model_calls_total", {"model": "dedup", "outcome": "ok"})
        or 0
    )


def hits(kind: str) -> float:
    total = 0.0
    for method in ("ServingService.Predict", "PredictionService.Predict"):
        total += (
            REGISTRY.get_sample_value("mlmesh_serving_dedup_hits_total", {"method": method, "kind": kind})
            or 0
        )
    return total


def request(seed: int) -> serving_pb2.PredictRequest:
    x = np.random.default_rng(seed).integers(0, 256, (1, 28, 28)).astype(np.float32)
    return serving_pb2.PredictRequest(model_name="dedup", inputs={"image": tensor.to_proto(x)})


def test_interceptor_covers_mlmesh_and_tf_serving_predict_methods() -> None:
    services = {
        "mlmesh.serving.v1.ServingService": serving_pb2.DESCRIPTOR.services_by_name["ServingService"],
        "tensorflow.serving.PredictionService": prediction_service_pb2.DESCRIPTOR.services_by_name[
            "PredictionService"
        ],
    }
    for method in DEFAULT_METHODS:
        service, name = method.strip("/").split("/")
        assert services[service].methods_by_name[name] is not None


def test_identical_requests_without_a_key_are_replayed_with_content_hashing(served: Served) -> None:
    before, replayed = calls(), hits("replayed")
    first = served.stub.Predict(request(1), timeout=30)
    second = served.stub.Predict(request(1), timeout=30)
    other = served.stub.Predict(request(2), timeout=30)
    assert first == second and other != first
    assert calls() - before == 2
    assert hits("replayed") - replayed == 1


def test_tf_serving_predict_is_coalesced_by_key(served: Served) -> None:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "anything"
    before, coalesced = served.tfs.calls, hits("coalesced") + hits("replayed")
    with ThreadPoolExecutor(5) as pool:
        answers = list(
            pool.map(
                lambda _: served.tfs_stub.Predict(req, timeout=10, metadata=(("idempotency-key", "tfs-1"),)),
                range(5),
            )
        )
    assert all(a.model_spec.name == "anything" for a in answers)
    assert served.tfs.calls - before == 1
    assert hits("coalesced") + hits("replayed") - coalesced == 4


def test_errors_reach_every_duplicate_and_are_not_cached(served: Served) -> None:
    missing = serving_pb2.PredictRequest(model_name="absent", inputs=request(3).inputs)

    def one(_: int) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as e:
            served.stub.Predict(missing, timeout=10, metadata=(("idempotency-key", "err-1"),))
        return e.value

    replayed = hits("replayed")
    with ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(one, range(6)))
    for error in errors:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "model 'absent' is not available" in str(error.details())
    assert hits("replayed") == replayed  # an error is never replayed


def test_overlong_key_is_invalid_argument(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as e:
        served.stub.Predict(request(4), timeout=10, metadata=(("idempotency-key", "k" * 300),))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency-key has 300 characters; expected 1..256" in str(e.value.details())


def test_a_failed_execution_answers_its_coalesced_duplicates_with_the_same_status(served: Served) -> None:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "slow-missing"
    before, coalesced = served.tfs.calls, hits("coalesced")

    def one(_: int) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as e:
            served.tfs_stub.Predict(req, timeout=10, metadata=(("idempotency-key", "tfs-err"),))
        return e.value

    with ThreadPoolExecutor(5) as pool:
        errors = list(pool.map(one, range(5)))
    assert {(e.code(), e.details()) for e in errors} == {
        (grpc.StatusCode.NOT_FOUND, "model 'slow-missing' is not available")
    }
    assert served.tfs.calls - before == 1
    assert hits("coalesced") - coalesced == 4
