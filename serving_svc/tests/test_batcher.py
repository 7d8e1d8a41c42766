"""Dynamic batching: coalescing, TF Serving's knobs, limits, deadlines and failure delivery,
on a real NumPy model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from mlmesh.errors import InvalidArgument, MlmeshError, NotFound, ResourceExhausted, Unavailable
from prometheus_client import REGISTRY

from serving_svc.core.batch_options import BatchingOptions
from serving_svc.core.batcher import REQUEST_DEADLINE, Batcher, BatchingRegistry, DeadlineExceeded

pytestmark = pytest.mark.unit
T = TypeVar("T")


class Affine:
    """y = 2x + 1 per example, recording the batch size of every call."""

    def __init__(self, fail: bool = False, drop_row: bool = False) -> None:
        self.sizes: list[int] = []
        self.fail = fail
        self.drop_row = drop_row

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = batch["x"]
        self.sizes.append(len(x))
        if self.fail:
            raise RuntimeError("kernel exploded")
        y = 2 * x + 1
        return {"y": y[1:] if self.drop_row else y}


def run(scenario: Callable[[Batcher], Awaitable[T]], model: Affine, **options: Any) -> T:
    """Run `scenario` against a started batcher; options are BatchingOptions fields
    (max_wait_s is shorthand for batch_timeout_micros)."""
    wait = options.pop("max_wait_s", 0.05)
    options.setdefault("max_batch_size", 8)
    options.setdefault("max_queue", 100)
    options.setdefault("batch_timeout_micros", round(wait * 1e6))

    async def main() -> T:
        batcher = Batcher(model, model="affine", options=BatchingOptions(**options))
        batcher.start()
        try:
            return await scenario(batcher)
        finally:
            await batcher.close()

    return asyncio.run(main())


def example(value: float, rows: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, np.float32)}


def test_concurrent_requests_share_model_calls_up_to_max_batch_size() -> None:
    model = Affine()

    async def scenario(b: Batcher) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(b.submit(example(i), 1) for i in range(20)))

    results = run(scenario, model, max_batch_size=8)
    assert sorted(model.sizes) == [4, 8, 8]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * i + 1, np.float32))


def test_lone_request_is_answered_after_the_wait_without_a_full_batch() -> None:
    model = Affine()
    result = run(lambda b: b.submit(example(3.0, rows=2), 2), model, max_batch_size=32, max_wait_s=0.01)
    assert model.sizes == [2]
    np.testing.assert_array_equal(result["y"], np.full((2, 2), 7.0, np.float32))


def test_request_larger_than_max_batch_size_runs_alone() -> None:
    model = Affine()

    async def scenario(b: Batcher) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(b.submit(example(1.0, rows=5), 5), b.submit(example(2.0), 1))

    big, small = run(scenario, model, max_batch_size=4)
    assert model.sizes == [5, 1]
    assert big["y"].shape == (5, 2) and small["y"].shape == (1, 2)


def test_requests_with_different_example_shapes_are_not_mixed() -> None:
    model = Affine()

    async def scenario(b: Batcher) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(b.submit(example(1.0, width=2), 1), b.submit(example(1.0, width=3), 1))

    narrow, wide = run(scenario, model)
    assert model.sizes == [1, 1]
    assert narrow["y"].shape == (1, 2) and wide["y"].shape == (1, 3)


def test_full_queue_is_resource_exhausted() -> None:
    model = Affine()

    async def scenario(b: Batcher) -> dict[str, np.ndarray]:
        first = asyncio.ensure_future(b.submit(example(1.0), 1))
        await asyncio.sleep(0)  # let it enqueue; it then waits out max_wait_s
        with pytest.raises(ResourceExhausted, match=r"1 requests queued, the limit \(max_queue\) is 1") as e:
            await b.submit(example(2.0), 1)
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        return await first

    result = run(scenario, model, max_queue=1, max_wait_s=0.2)
    np.testing.assert_array_equal(result["y"], np.full((1, 2), 3.0, np.float32))


def test_model_failure_reaches_every_request_of_the_batch_and_the_batcher_recovers() -> None:
    model = Affine(fail=True)

    async def scenario(b: Batcher) -> dict[str, np.ndarray]:
        outcomes = await asyncio.gather(*(b.submit(example(i), 1) for i in range(3)), return_exceptions=True)
        assert all(isinstance(o, MlmeshError) and "kernel exploded" in o.message for o in outcomes)
        assert all(o.code == grpc.StatusCode.INTERNAL for o in outcomes)  # type: ignore[union-attr]
        model.fail = False
        return await b.submit(example(1.0), 1)

    result = run(scenario, model)
    assert model.sizes == [3, 1]
    np.testing.assert_array_equal(result["y"], np.full((1, 2), 3.0, np.float32))


def test_output_without_the_batch_dimension_is_an_internal_error() -> None:
    model = Affine(drop_row=True)

    async def scenario(b: Batcher) -> None:
        await b.submit(example(1.0, rows=2), 2)

    with pytest.raises(MlmeshError, match=r"output 'y' has shape \[1, 2\] for a batch of 2"):
        run(scenario, model)


def test_cancelled_request_is_left_out_of_the_batch() -> None:
    model = Affine()

    async def scenario(b: Batcher) -> dict[str, np.ndarray]:
        gone = asyncio.ensure_future(b.submit(example(1.0), 1))
        kept = asyncio.ensure_future(b.submit(example(2.0), 1))
        await asyncio.sleep(0)
        gone.cancel()
        return await kept

    result = run(scenario, model, max_wait_s=0.02)
    assert model.sizes == [1]
    np.testing.assert_array_equal(result["y"], np.full((1, 2), 5.0, np.float32))


def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    model = Affine()

    async def scenario(b: Batcher) -> None:
        queued = asyncio.ensure_future(b.submit(example(1.0), 1))
        await asyncio.sleep(0)
        await b.close()
        with pytest.raises(Unavailable, match="was unloaded"):
            await queued
        with pytest.raises(Unavailable, match="is unloading"):
            await b.submit(example(1.0), 1)

    run(scenario, model, max_wait_s=5.0)
    assert model.sizes == []


# -- TF Serving's knobs --------------------------------------------------------


class Slow(Affine):
    """Affine that takes `seconds` per call and records how many calls overlapped."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.seconds)
        with self._lock:
            self.active -= 1
        return super().__call__(batch)


def test_queue_beyond_max_enqueued_batches_is_resource_exhausted() -> None:
    model = Affine()

    async def scenario(b: Batcher) -> list[dict[str, np.ndarray]]:
        # Two batches' worth of 3-example requests (max_batch_size 4) fit; a third batch does not.
        queued = [asyncio.ensure_future(b.submit(example(i, rows=3), 3)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(
            ResourceExhausted, match=r"2 batches queued, the limit \(max_enqueued_batches\) is 2"
        ):
            await b.submit(example(9.0, rows=3), 3)
        return await asyncio.gather(*queued)

    results = run(scenario, model, max_batch_size=4, max_enqueued_batches=2, max_wait_s=0.1)
    assert model.sizes == [3, 3]
    assert [r["y"][0, 0] for r in results] == [1.0, 3.0]


def expired() -> float:
    return REGISTRY.get_sample_value("mlmesh_serving_deadline_expired_total", {"model": "affine"}) or 0.0


def test_deadline_passed_while_queued_is_deadline_exceeded_without_a_model_call() -> None:
    model = Slow(0.3)

    async def scenario(b: Batcher) -> None:
        busy = asyncio.ensure_future(b.submit(example(1.0), 1))  # holds the only batch thread
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded, match="deadline passed while queued for model 'affine'") as e:
            await b.submit(example(2.0), 1, deadline=time.monotonic() + 0.05)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # The gRPC edge passes the deadline through REQUEST_DEADLINE instead.
        REQUEST_DEADLINE.set(time.monotonic() + 0.05)
        with pytest.raises(DeadlineExceeded):
            await b.submit(example(3.0), 1)
        REQUEST_DEADLINE.set(None)
        await busy

    before = expired()
    run(scenario, model, max_batch_size=1, num_batch_threads=1, max_wait_s=0)
    assert model.sizes == [1]  # only the request that held the thread ran
    assert expired() - before == 2


def test_request_already_expired_when_its_batch_forms_is_left_out() -> None:
    model = Slow(0.2)

    async def scenario(b: Batcher) -> dict[str, np.ndarray]:
        busy = asyncio.ensure_future(b.submit(example(1.0), 1))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(b.submit(example(2.0), 1, deadline=time.monotonic() + 0.01))
        kept = asyncio.ensure_future(b.submit(example(3.0), 1))
        with pytest.raises(DeadlineExceeded):
            await late
        await busy
        return await kept

    result = run(scenario, model, max_batch_size=4, num_batch_threads=1, max_wait_s=0)
    assert model.sizes == [1, 1]
    np.testing.assert_array_equal(result["y"], np.full((1, 2), 7.0, np.float32))


def test_batch_is_padded_to_the_next_allowed_size_and_the_padding_sliced_off() -> None:
    model = Affine()

    async def scenario(b: Batcher) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(b.submit(example(i), 1) for i in range(3)))

    results = run(scenario, model, max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    assert model.sizes == [4]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * i + 1, np.float32))


def test_request_above_max_batch_size_runs_alone_unpadded() -> None:
    model = Affine()
    result = run(
        lambda b: b.submit(example(1.0, rows=6), 6), model, max_batch_size=4, allowed_batch_sizes=(2, 4)
    )
    assert model.sizes == [6]
    assert result["y"].shape == (6, 2)


def test_num_batch_threads_batches_run_at_once() -> None:
    for threads in (1, 2):
        model = Slow(0.1)

        async def scenario(b: Batcher) -> list[dict[str, np.ndarray]]:
            return await asyncio.gather(*(b.submit(example(i), 1) for i in range(4)))

        run(scenario, model, max_batch_size=1, num_batch_threads=threads, max_wait_s=0)
        assert model.most_active == threads


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size is 0; expected 1..65536"),
        ({"batch_timeout_micros": -1}, "batch_timeout_micros is -1; expected 0..10000000"),
        ({"max_enqueued_batches": 0}, "max_enqueued_batches is 0; expected 1..1000000"),
        ({"num_batch_threads": 65}, "num_batch_threads is 65; expected 1..64"),
        (
            {"allowed_batch_sizes": (2, 4)},
            r"allowed_batch_sizes \[2, 4\] must end with max_batch_size \(8\), not 4",
        ),
        ({"allowed_batch_sizes": (4, 2, 8)}, "must be positive and strictly increasing"),
        ({"max_batch": 4}, "unknown batching field 'max_batch'"),
    ],
)
def test_invalid_options_are_invalid_argument_naming_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as e:
        BatchingOptions(max_batch_size=8).replace(**changes)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_lowering_max_batch_size_cuts_the_allowed_sizes_at_it() -> None:
    options = BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4, 8)).replace(max_batch_size=6)
    assert options.allowed_batch_sizes == (2, 4, 6)


def test_registry_changes_reach_live_batchers_and_later_versions() -> None:
    model = Affine()

    async def scenario() -> tuple[list[int], int]:
        registry = BatchingRegistry(BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000))
        live = registry.create(model, model="affine")
        try:
            registry.set("affine", {"max_batch_size": 2})
            await asyncio.gather(*(live.submit(example(i), 1) for i in range(4)))
            with pytest.raises(NotFound, match="model 'other' is not loaded; loaded models: \\['affine'\\]"):
                registry.set("other", {"max_batch_size": 2})
            with pytest.raises(InvalidArgument, match="max_batch_size is 0"):
                registry.set(None, {"max_batch_size": 0})
            registry.set(None, {"num_batch_threads": 3})
            later = registry.create(model, model="affine")
            await later.close()
            return list(model.sizes), later.options.num_batch_threads
        finally:
            await live.close()

    sizes, threads = asyncio.run(scenario())
    assert sizes == [2, 2]
    assert threads == 3
