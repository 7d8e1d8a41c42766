"""The coordinator releases a finished job on the shards (DropJob, forced, once) after its
final export, against two real shard processes: the shards keep a final checkpoint and free
the job; the release is recorded with the job, so a restarted coordinator does not repeat it;
a shard that cannot be reached is asked again later."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlmesh.errors import NotFound

from trainer_svc.clients import CallPolicy, IngestClient, ParamClient
from trainer_svc.core import coordinator as coordinator_mod
from trainer_svc.core.coordinator import Coordinator, CoordinatorConfig
from trainer_svc.core.jobs import Job, JobState
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.store import JobStore
from trainer_svc.core.types import OptimizerConfig, VariableSpec
from trainer_svc.tests import procs
from trainer_svc.tests.conftest import DEAD_ADDR

pytestmark = pytest.mark.integration

SPEC = JobSpec(
    model="trainer_svc.tests.models:tiny", train_dataset="d", epochs=1, batch_size=8, model_name="m"
)


@pytest.fixture
def shard_addrs(tmp_path: Path) -> Iterator[list[str]]:
    with procs.processes() as started:
        for i in range(2):
            args = ["paramserver_svc", "--shard-index", str(i), "--num-shards", "2",
                    "--checkpoint-dir", str(tmp_path / f"shard{i}")]  # fmt: skip
            started.append(procs.start(f"shard{i}", args, tmp_path))
        yield [p.addr for p in started]


def make(tmp_path: Path, addrs: list[str]) -> Coordinator:
    policy = CallPolicy(timeout=5.0, retry_seconds=0.0)
    config = CoordinatorConfig(ingest_addr=DEAD_ADDR, ps_addrs=tuple(addrs), model_repo=tmp_path / "repo")
    c = Coordinator(
        config, JobStore(tmp_path / "work"), IngestClient(DEAD_ADDR, policy), ParamClient(addrs, policy)
    )
    c.load()
    return c


def test_a_terminal_job_is_released_once_and_a_running_one_is_not(
    shard_addrs: list[str], tmp_path: Path
) -> None:
    asyncio.run(_release(shard_addrs, tmp_path))


async def _release(addrs: list[str], tmp_path: Path) -> None:
    c = make(tmp_path, addrs)
    w = VariableSpec("w", "float32", (2,), False, np.ones(2, np.float32))
    for job_id in ("done", "running"):
        for s in range(2):
            await c.params.register(s, job_id, [w], OptimizerConfig("sgd", 0.1))
        job = Job(job_id, SPEC, state=JobState.SUCCEEDED if job_id == "done" else JobState.RUNNING)
        c.jobs[job_id] = job
        c.store.save(job)
    c._registered.add("running")
    await c._release_finished(now=0.0)
    assert c.jobs["done"].released and not c.jobs["running"].released
    for s in range(2):
        info = await c.params.shard_info(s)
        assert {v.job_id for v in info.variables} == {"running"}
        with pytest.raises(NotFound, match="job 'done' was dropped from this shard"):
            await c.params.pull(s, "done", ["w"], {})
        assert any((tmp_path / f"shard{s}").glob("job-done.*.npz"))  # the final checkpoint
    await c.close()
    # A restarted coordinator reads the release from the job record and does not repeat it.
    again = make(tmp_path, addrs)
    assert again.jobs["done"].released and not again.jobs["running"].released
    await again.params.close()
    await c.params.close()


def test_an_unreachable_shard_is_asked_again_later(shard_addrs: list[str], tmp_path: Path) -> None:
    asyncio.run(_retry(shard_addrs, tmp_path))


async def _retry(addrs: list[str], tmp_path: Path) -> None:
    c = make(tmp_path, [addrs[0], DEAD_ADDR])
    job = Job("gone", SPEC, state=JobState.CANCELLED)
    c.jobs["gone"] = job
    await c._release_finished(now=100.0)
    assert not job.released  # shard 1 did not answer
    assert c._release_after["gone"] == 100.0 + coordinator_mod.RELEASE_RETRY_SECONDS
    c.params = ParamClient(addrs, c.params.policy)  # the shard is back
    await c._release_finished(now=101.0)
    assert not job.released  # not before the retry is due
    await c._release_finished(now=100.0 + coordinator_mod.RELEASE_RETRY_SECONDS)
    assert job.released  # never registered: both shards answer "unknown", which is done too
    await c.params.close()
