"""Dynamic batching: coalescing, limits, and failure delivery, on a real NumPy model."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import numpy as np
import pytest
from mlmesh.errors import MlmeshError, ResourceExhausted, Unavailable

from serving_svc.core.batcher import Batcher

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


def run(scenario: Callable[[Batcher], Awaitable[T]], model: Affine, **options: float) -> T:
    async def main() -> T:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(
                model,
                model="affine",
                max_batch_size=int(options.get("max_batch_size", 8)),
                max_wait_s=options.get("max_wait_s", 0.05),
                max_queue=int(options.get("max_queue", 100)),
                executor=pool,
            )
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
