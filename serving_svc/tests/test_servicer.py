"""ServingService over a real gRPC channel: answers, every bad input's status, batching."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.serving.v1 import serving_pb2
from mlmesh.types.v1 import tensor_pb2
from prometheus_client import REGISTRY

from serving_svc.config import ServingSettings
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import InProcessServer, copy_version, in_process_server, wait_for

pytestmark = pytest.mark.unit

MAX_EXAMPLES = 64


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, exports: Exports) -> Iterator[InProcessServer]:
    repo = tmp_path_factory.mktemp("repo")
    copy_version(exports.image_v1, repo, "image", 1)
    copy_version(exports.multi, repo, "multi", 1)
    settings = ServingSettings(
        model_repo=repo,
        poll_seconds=0.1,
        max_batch_size=8,
        max_batch_wait_ms=20,
        max_request_examples=MAX_EXAMPLES,
    )
    with in_process_server(settings) as server:
        yield server


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)


def predict(server: InProcessServer, **fields: Any) -> serving_pb2.PredictResponse:
    return server.stub.Predict(serving_pb2.PredictRequest(**fields), timeout=30)  # type: ignore[no-any-return]


def with_instances(model: str, instances: list[Any], **fields: Any) -> serving_pb2.PredictRequest:
    request = serving_pb2.PredictRequest(model_name=model, **fields)
    request.instances.SetInParent()  # present even when empty, as `"instances": []` in JSON is
    request.instances.extend(instances)
    return request


def expect_error(server: InProcessServer, request: serving_pb2.PredictRequest, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Predict(request, timeout=30)
    assert e.value.code() == code, e.value.details()
    return str(e.value.details())


# -- answers ------------------------------------------------------------------


def test_predict_with_tensors_equals_a_direct_model_call(served: InProcessServer, exports: Exports) -> None:
    x = images(3)
    response = predict(served, model_name="image", inputs={"image": tensor.to_proto(x)})
    assert (response.model_name, response.version) == ("image", 1)
    out = tensor.from_proto(response.outputs["probabilities"])
    np.testing.assert_allclose(out, exports.model_v1.predict(x), rtol=1e-5, atol=1e-6)
    assert len(response.predictions.values) == 0  # only for `instances` requests


def test_predict_with_instances_equals_a_direct_model_call(served: InProcessServer, exports: Exports) -> None:
    x = images(2, seed=1)
    response = served.stub.Predict(with_instances("image", x.astype(float).tolist()), timeout=30)
    expected = exports.model_v1.predict(x)
    np.testing.assert_allclose(
        tensor.from_proto(response.outputs["probabilities"]), expected, rtol=1e-5, atol=1e-6
    )
    predictions = np.array([list(p) for p in response.predictions])
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)


def test_large_instances_request_runs_as_its_own_batch(served: InProcessServer, exports: Exports) -> None:
    x = images(20, seed=2)  # above max_batch_size (8) and converted off the event loop
    response = served.stub.Predict(with_instances("image", x.astype(float).tolist()), timeout=30)
    predictions = np.array([list(p) for p in response.predictions])
    np.testing.assert_allclose(predictions, exports.model_v1.predict(x), rtol=1e-5, atol=1e-6)


def test_explicit_available_version_is_served(served: InProcessServer) -> None:
    response = predict(served, model_name="image", version=1, inputs={"image": tensor.to_proto(images(1))})
    assert response.version == 1


def test_multi_input_tensors_and_instances_agree(served: InProcessServer) -> None:
    a = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    b = np.array([10, 20], np.int32)  # int32 → int64 is a safe cast
    by_tensor = predict(served, model_name="multi", inputs={"a": tensor.to_proto(a), "b": tensor.to_proto(b)})
    np.testing.assert_allclose(tensor.from_proto(by_tensor.outputs["total"]), [16.0, 35.0])
    np.testing.assert_allclose(tensor.from_proto(by_tensor.outputs["scaled"]), a * 2)
    instances = [{"a": [1, 2, 3], "b": 10}, {"a": [4, 5, 6], "b": 20}]
    by_instance = served.stub.Predict(with_instances("multi", instances), timeout=30)
    np.testing.assert_allclose(tensor.from_proto(by_instance.outputs["total"]), [16.0, 35.0])
    # `predictions` is the first output in sorted-name order: "scaled" before "total".
    assert [list(p) for p in by_instance.predictions] == (a * 2).tolist()


def test_float64_tensor_with_float32_range_values_is_accepted(
    served: InProcessServer, exports: Exports
) -> None:
    x = images(1).astype(np.float64)
    response = predict(served, model_name="image", inputs={"image": tensor.to_proto(x)})
    out = tensor.from_proto(response.outputs["probabilities"])
    np.testing.assert_allclose(out, exports.model_v1.predict(x), rtol=1e-5, atol=1e-6)


def test_model_status_lists_versions_with_states(served: InProcessServer) -> None:
    status = served.stub.GetModelStatus(serving_pb2.GetModelStatusRequest(model_name="image"), timeout=10)
    assert [(v.version, v.state) for v in status.versions] == [(1, serving_pb2.MODEL_VERSION_STATE_AVAILABLE)]


def test_concurrent_requests_are_answered_by_fewer_model_calls(
    served: InProcessServer, exports: Exports
) -> None:
    n = 24

    def current() -> Any:
        with served.manager.lease("image") as record:
            return record

    record = served.loop.call(current)
    before = record.batcher.batches
    barrier = threading.Barrier(n)
    x = images(n, seed=7)

    def one(i: int) -> np.ndarray:
        barrier.wait(10)
        response = predict(served, model_name="image", inputs={"image": tensor.to_proto(x[i : i + 1])})
        return tensor.from_proto(response.outputs["probabilities"])

    with ThreadPoolExecutor(n) as pool:
        outputs = list(pool.map(one, range(n)))
    calls = record.batcher.batches - before
    assert calls < n, f"{n} concurrent requests took {calls} model calls"
    np.testing.assert_allclose(np.concatenate(outputs), exports.model_v1.predict(x), rtol=1e-5, atol=1e-6)


# -- bad input: exact status codes ----------------------------------------------


def test_unknown_model_is_not_found_and_lists_available_models(served: InProcessServer) -> None:
    details = expect_error(
        served,
        serving_pb2.PredictRequest(model_name="nope", inputs={"image": tensor.to_proto(images(1))}),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details == (
        "model 'nope' is not available (unknown or not loaded yet); available models: ['image', 'multi']"
    )


def test_unavailable_version_is_not_found(served: InProcessServer) -> None:
    details = expect_error(
        served,
        serving_pb2.PredictRequest(
            model_name="image", version=3, inputs={"image": tensor.to_proto(images(1))}
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "model 'image' version 3 is not loaded; available versions: [1]" in details


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model_name": ""}, "model_name is empty"),
        ({"model_name": "image", "version": -1}, "version is -1"),
        ({"model_name": "image"}, "neither was set"),
    ],
)
def test_malformed_requests_are_invalid_argument(
    served: InProcessServer, fields: dict[str, Any], message: str
) -> None:
    details = expect_error(served, serving_pb2.PredictRequest(**fields), grpc.StatusCode.INVALID_ARGUMENT)
    assert message in details


def test_inputs_and_instances_together_are_invalid_argument(served: InProcessServer) -> None:
    request = with_instances(
        "image", [np.zeros((28, 28)).tolist()], inputs={"image": tensor.to_proto(images(1))}
    )
    assert "both were set" in expect_error(served, request, grpc.StatusCode.INVALID_ARGUMENT)


def raw(dtype: int, shape: list[int], content: bytes) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, content=content)  # type: ignore[arg-type]


def bad_tensor_cases() -> list[Any]:
    f32 = tensor.to_proto
    a = f32(np.zeros((2, 3), np.float32))
    too_many = MAX_EXAMPLES + 1
    case = pytest.param
    return [
        case(
            "image",
            {"image": f32(np.zeros((2, 27, 28), np.float32))},
            "input 'image' has shape [2,27,28] but the model expects [?,28,28]",
            id="shape",
        ),
        case(
            "image",
            {"img": f32(images(1))},
            "inputs ['img'] do not match the model's inputs ['image']: missing ['image'], unexpected ['img']",
            id="names",
        ),
        case("image", {"image": f32(np.zeros((0, 28, 28), np.float32))}, "batch size is 0", id="empty"),
        case(
            "image",
            {"image": f32(np.zeros((too_many, 28, 28), np.uint8))},
            f"batch size {too_many} exceeds the limit of {MAX_EXAMPLES}",
            id="too-many",
        ),
        case(
            "image",
            {"image": raw(tensor_pb2.DTYPE_FLOAT32, [1, 28, 28], b"\0" * 8)},
            "tensor 'image' has 8 bytes but float32[1,28,28] needs 3136",
            id="bytes",
        ),
        case(
            "image",
            {"image": raw(tensor_pb2.DTYPE_UNSPECIFIED, [1], b"")},
            "tensor 'image' has unknown dtype 0",
            id="dtype-unknown",
        ),
        case(
            "multi",
            {"a": a, "b": f32(np.array([1.5, 2.0]))},
            "input 'b' has dtype float64 but the model expects int64; it holds non-integer values",
            id="dtype-lossy",
        ),
        case(
            "multi",
            {"a": a, "b": f32(np.array([1, 2, 3]))},
            "inputs have different batch sizes {'a': 2, 'b': 3}",
            id="batch-disagree",
        ),
    ]


@pytest.mark.parametrize(("model", "inputs", "message"), bad_tensor_cases())
def test_bad_tensors_are_invalid_argument(
    served: InProcessServer, model: str, inputs: dict[str, tensor_pb2.Tensor], message: str
) -> None:
    details = expect_error(
        served, serving_pb2.PredictRequest(model_name=model, inputs=inputs), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert message in details


def bad_instance_cases() -> list[Any]:
    zeros = np.zeros((28, 28)).tolist()
    case = pytest.param
    return [
        case(
            "image",
            [zeros, np.zeros((28, 27)).tolist()],
            "instance 1 input 'image' has shape [28,27] but the model expects [28,28] per example",
            id="shape",
        ),
        case("image", [["x"] * 28], "instance 0 holds a string", id="string"),
        case("image", [None], "instance 0 holds a null", id="null"),
        case(
            "image",
            [[[1.0] * 28] * 27 + [[1.0] * 27]],
            "instance 0 input 'image' is not a rectangular array of numbers",
            id="ragged",
        ),
        case(
            "multi", [[1, 2, 3]], "instance 0 is a list but the model has inputs ['a', 'b']", id="not-object"
        ),
        case(
            "multi",
            [{"a": [1, 2, 3], "b": 1, "c": 2}],
            "instance 0: inputs ['a', 'b', 'c'] do not match the model's inputs ['a', 'b']: unexpected ['c']",
            id="names",
        ),
        case(
            "multi",
            [{"a": [1, 2, 3], "b": 1}, {"a": [1, 2, 3], "b": 300.5}],
            "instance 1 input 'b' has dtype float64 but the model expects int64",
            id="dtype-lossy",
        ),
        case("image", [], "batch size is 0", id="empty"),
    ]


@pytest.mark.parametrize(("model", "instances", "message"), bad_instance_cases())
def test_bad_instances_are_invalid_argument(
    served: InProcessServer, model: str, instances: list[Any], message: str
) -> None:
    details = expect_error(served, with_instances(model, instances), grpc.StatusCode.INVALID_ARGUMENT)
    assert message in details


def test_model_status_of_unknown_model_is_not_found(served: InProcessServer) -> None:
    with pytest.raises(grpc.RpcError) as e:
        served.stub.GetModelStatus(serving_pb2.GetModelStatusRequest(model_name="nope"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "known models: ['image', 'multi']" in str(e.value.details())


def test_model_status_without_name_is_invalid_argument(served: InProcessServer) -> None:
    with pytest.raises(grpc.RpcError) as e:
        served.stub.GetModelStatus(serving_pb2.GetModelStatusRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_full_batch_queue_is_resource_exhausted(tmp_path: Path, exports: Exports) -> None:
    copy_version(exports.image_v1, tmp_path, "queued", 1)
    settings = ServingSettings(model_repo=tmp_path, max_queue=1, max_batch_size=32, max_batch_wait_ms=1000)
    request = serving_pb2.PredictRequest(model_name="queued", inputs={"image": tensor.to_proto(images(1))})
    with in_process_server(settings) as server:
        first = server.stub.Predict.future(request, timeout=30)
        wait_for(
            lambda: REGISTRY.get_sample_value("mlmesh_serving_queue_depth", {"model": "queued"}) == 1,
            what="the first request to be queued",
        )
        details = expect_error(server, request, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "model 'queued' has 1 requests queued, the limit (max_queue) is 1" in details
        assert first.result().version == 1
