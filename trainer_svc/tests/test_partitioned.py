"""A worker step against two real parameter-server shard processes, with a
dense variable partitioned by rows over both: the worker pulls it whole,
and its gradient lands on the right rows of each shard."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlmesh.errors import FailedPrecondition

from trainer_svc.clients import CallPolicy, ParamClient
from trainer_svc.core import placement, tfmodel
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.step import StepRunner
from trainer_svc.core.types import OptimizerConfig, VariableSpec
from trainer_svc.core.worker import Assignment, TrainingWorker, WorkerConfig, _JobRun
from trainer_svc.tests import procs

pytestmark = pytest.mark.integration

JOB = "partitioned-1"
LR = 0.5
SPEC = JobSpec(
    model="trainer_svc.tests.models:tiny",
    model_args={"units": "6"},
    train_dataset="d",
    epochs=1,
    batch_size=8,
    model_name="m",
    seed=3,
)


@pytest.fixture
def shard_addrs(tmp_path: Path) -> Iterator[list[str]]:
    with procs.processes() as started:
        for i in range(2):
            args = ["paramserver_svc", "--shard-index", str(i), "--num-shards", "2",
                    "--checkpoint-dir", str(tmp_path / f"shard{i}")]  # fmt: skip
            started.append(procs.start(f"shard{i}", args, tmp_path))
        yield [p.addr for p in started]


def test_partitioned_variable_is_pulled_whole_and_updated_row_by_row(shard_addrs: list[str]) -> None:
    asyncio.run(_step(shard_addrs))


async def _step(addrs: list[str]) -> None:
    ms = tfmodel.build(SPEC)
    runner = StepRunner(ms, tfmodel.input_specs(ms))
    initial = tfmodel.variable_values(ms)  # probabilities/kernel float32 [4, 6], bias [6]
    params = ParamClient(addrs, CallPolicy(timeout=10.0, retry_seconds=5.0))
    try:
        # The coordinator's side: the kernel (96 bytes) is partitioned, the bias (24) is not.
        partitioned = placement.partitioned_names(initial, [], 2, min_partition_bytes=64)
        assert partitioned == ["probabilities/kernel"]
        plan = placement.plan_registration(initial, [], 2, partitioned)
        for shard in range(2):
            await params.register(shard, JOB, plan[shard], OptimizerConfig("sgd", LR))

        # The worker's side: the layout comes from the shards.
        layout = await placement.read_layout(params, JOB, runner.dense_names, [])
        assert list(layout.partitioned) == ["probabilities/kernel"]
        assert layout.partitioned["probabilities/kernel"].total == 4
        worker = TrainingWorker(WorkerConfig("w0"), None, None, None, None)  # type: ignore[arg-type]
        assignment = Assignment(JOB, SPEC, "unused:1", tuple(addrs))
        run = _JobRun(worker, assignment, None, params, runner, layout)  # type: ignore[arg-type]

        await run.join()
        pulled = await run.pull({}, run.clock)
        for name in runner.dense_names:
            np.testing.assert_array_equal(pulled.dense[name], initial[name])

        rng = np.random.default_rng(0)
        batch = {"x": rng.normal(size=(8, 4)).astype(np.float32), "y": rng.integers(0, 6, size=8)}
        x = runner.inputs(batch)
        result = runner.compute(pulled.dense, pulled.rows, x, batch["y"])
        assert np.abs(result.dense_grads["probabilities/kernel"]).sum() > 0
        await run.push(run.clock, result)

        # The same SGD applied to the full arrays.
        expected = {n: initial[n] - np.float32(LR) * result.dense_grads[n] for n in runner.dense_names}
        after = await run.pull({}, run.clock + 1)
        for name in runner.dense_names:
            np.testing.assert_allclose(after.dense[name], expected[name], rtol=1e-6)
        # Each shard holds exactly its rows of the kernel, updated, in local order.
        kernel = expected["probabilities/kernel"]
        for shard in range(2):
            got = (await params.pull(shard, JOB, ["probabilities/kernel"], {})).dense["probabilities/kernel"]
            np.testing.assert_allclose(got, layout.part("probabilities/kernel", kernel, shard), rtol=1e-6)
            rows = layout.global_rows("probabilities/kernel", shard)[:2]
            by_rows = (await params.pull(shard, JOB, [], {"probabilities/kernel": rows})).rows
            np.testing.assert_allclose(by_rows["probabilities/kernel"][1], kernel[rows], rtol=1e-6)
        # The bias stayed whole, on one shard.
        assert sorted(layout.whole[0] + layout.whole[1]) == ["probabilities/bias"]
    finally:
        await params.close()


def test_a_worker_reading_another_jobs_layout_is_refused(shard_addrs: list[str]) -> None:
    async def run() -> None:
        params = ParamClient(shard_addrs, CallPolicy(timeout=10.0, retry_seconds=5.0))
        try:
            with pytest.raises(FailedPrecondition, match="not registered on shard"):
                await placement.read_layout(params, "no-such-job", ["w"], [])
        finally:
            await params.close()

    asyncio.run(run())


def test_big_tensors_travel_as_chunked_streams_with_the_same_result(shard_addrs: list[str]) -> None:
    """A push of >= 4 MiB goes as PushStream, a pull asked to stream as PullStream; both
    land exactly like the unary calls (checked against a second, unary-only variable)."""

    async def run() -> None:
        params = ParamClient(shard_addrs, CallPolicy(timeout=30.0, retry_seconds=5.0))
        try:
            rng = np.random.default_rng(3)
            start = rng.normal(size=(1024, 1280)).astype(np.float32)  # 5 MiB
            specs = [
                VariableSpec("big", "float32", start.shape, False, start),
                VariableSpec("twin", "float32", start.shape, False, start),
            ]
            await params.register(0, "stream-job", specs, OptimizerConfig("sgd", 0.5))
            grad = rng.normal(size=start.shape).astype(np.float32)
            assert await params.push(0, "stream-job", "w", 0, {"big": grad}, {})  # streamed (5 MiB)
            unary = CallPolicy(timeout=30.0, retry_seconds=5.0, stream_bytes=1 << 40)
            twin = ParamClient(shard_addrs, unary)
            try:
                assert await twin.push(0, "stream-job", "w2", 0, {"twin": grad}, {})  # one message
            finally:
                await twin.close()
            streamed = await params.pull(0, "stream-job", ["big", "twin"], {}, stream=True)
            plain = await params.pull(0, "stream-job", ["big", "twin"], {})
            np.testing.assert_array_equal(streamed.dense["big"], start - 0.5 * grad)
            for name in ("big", "twin"):
                np.testing.assert_array_equal(streamed.dense[name], plain.dense[name])
        finally:
            await params.close()

    asyncio.run(run())
