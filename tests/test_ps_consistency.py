"""Consistency models across real processes: two `python -m paramserver_svc` shards, and
scripted workers (threads with their own gRPC channels) that pull, "compute" and push.

The workers count the pushes they have *sent*; a shard can know at most that many, so a
check against those counts holds whatever the timing. A shard that did not enforce the
model would let the fast worker run ahead and fail it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.channels import sync_channel
from mlmesh.paramserver.v1 import paramserver_pb2 as pb
from mlmesh.paramserver.v1 import paramserver_pb2_grpc

from paramserver_svc.tests.conftest import ShardProcess, start_shard_process, stop_process, var

pytestmark = pytest.mark.integration

F32 = np.float32
LR = 0.01
# Each shard holds one dense variable whole, so every step touches both shards.
VARIABLES = {0: "w", 1: "v"}


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[list[ShardProcess]]:
    procs = [start_shard_process(tmp_path, i, 2, tmp_path / f"ckpt{i}") for i in range(2)]
    try:
        yield procs
    finally:
        for p in procs:
            stop_process(p)


class Worker:
    def __init__(self, shards: list[ShardProcess], job_id: str, worker_id: str) -> None:
        self.job_id, self.worker_id = job_id, worker_id
        self.channels = [sync_channel(s.addr) for s in shards]
        self.stubs = [paramserver_pb2_grpc.ParameterServerServiceStub(c) for c in self.channels]

    def join(self) -> int:
        req = pb.JoinJobRequest(job_id=self.job_id, worker_id=self.worker_id)
        return max(s.JoinJob(req, timeout=10).clock for s in self.stubs)

    def pull(self, clock: int) -> dict[str, np.ndarray]:
        out = {}
        for shard, stub in enumerate(self.stubs):
            name = VARIABLES[shard]
            req = pb.PullRequest(
                job_id=self.job_id, dense=[name], worker_id=self.worker_id, clock=clock, pushed=clock
            )
            out[name] = tensor.from_proto(stub.Pull(req, timeout=30).dense[name])
        return out

    def push(self, step: int, value: float) -> None:
        for shard, stub in enumerate(self.stubs):
            name = VARIABLES[shard]
            req = pb.PushRequest(job_id=self.job_id, worker_id=self.worker_id, step=step)
            req.dense_grads[name].CopyFrom(tensor.to_proto(np.full(4, value, F32)))
            assert stub.Push(req, timeout=30).applied

    def close(self) -> None:
        for c in self.channels:
            c.close()


def register(shards: list[ShardProcess], job_id: str, config: pb.JobConfig) -> None:
    for shard, sp in enumerate(shards):
        with sync_channel(sp.addr) as ch:
            paramserver_pb2_grpc.ParameterServerServiceStub(ch).RegisterVariables(
                pb.RegisterVariablesRequest(
                    job_id=job_id,
                    variables=[var(VARIABLES[shard], [4])],
                    optimizer=pb.OptimizerSpec(kind="sgd", learning_rate=LR),
                    config=config,
                ),
                timeout=10,
            )


def job_info(sp: ShardProcess, job_id: str) -> pb.JobInfo:
    with sync_channel(sp.addr) as ch:
        info = paramserver_pb2_grpc.ParameterServerServiceStub(ch).GetShardInfo(
            pb.GetShardInfoRequest(), timeout=10
        )
    return next(j for j in info.jobs if j.job_id == job_id)


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as e:  # surfaced below, with the thread's assertion
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]


def test_bounded_staleness_is_never_exceeded(shards: list[ShardProcess]) -> None:
    s, steps = 2, 30
    register(shards, "b", pb.JobConfig(consistency=pb.CONSISTENCY_BOUNDED, staleness=s))
    delays = {"fast": 0.0, "medium": 0.004, "slow": 0.015}
    sent = dict.fromkeys(delays, 0)
    lock = threading.Lock()
    leads: list[int] = []
    violations: list[str] = []

    def work(name: str) -> None:
        w = Worker(shards, "b", name)
        try:
            assert w.join() == 0
            for c in range(steps):
                w.pull(c)
                with lock:  # answered: every other worker must have sent at least c - s pushes
                    slowest = min(v for k, v in sent.items() if k != name)
                    leads.append(c - slowest)
                    if slowest < c - s:
                        violations.append(f"{name} pulled clock {c} while another had sent {slowest}")
                time.sleep(delays[name])
                with lock:
                    sent[name] += 1
                w.push(c, 1.0)
        finally:
            w.close()

    run_threads([lambda n=n: work(n) for n in delays])
    assert not violations, violations[:3]
    assert max(leads) == s  # the bound was reached, i.e. it was what held the fast worker back
    for sp in shards:
        assert job_info(sp, "b").version == 3 * steps  # BOUNDED applies every push on arrival


def test_sync_applies_one_aggregated_update_per_step(shards: list[ShardProcess]) -> None:
    steps = 20
    register(shards, "s", pb.JobConfig(consistency=pb.CONSISTENCY_SYNC))
    grads = {"a": 1.0, "b": 3.0}  # mean 2.0
    seen: dict[str, list[np.ndarray]] = {n: [] for n in grads}

    def work(name: str) -> None:
        w = Worker(shards, "s", name)
        try:
            assert w.join() == 0
            for c in range(steps):
                seen[name].append(w.pull(c)["w"].copy())
                time.sleep(0.01 if name == "b" else 0.0)
                w.push(c, grads[name])
        finally:
            w.close()

    run_threads([lambda n=n: work(n) for n in grads])
    for c in range(steps):  # both workers read exactly the same values at every step
        np.testing.assert_array_equal(seen["a"][c], seen["b"][c])
        np.testing.assert_allclose(seen["a"][c], -LR * 2.0 * c, rtol=1e-5)
    for sp in shards:
        info = job_info(sp, "s")
        assert info.version == info.clock == steps  # one update per step, not one per push


def test_sync_barrier_lets_a_silent_worker_go_when_its_lease_expires(shards: list[ShardProcess]) -> None:
    lease = 1.0
    register(shards, "d", pb.JobConfig(consistency=pb.CONSISTENCY_SYNC, worker_lease_seconds=lease))
    alive, dead = Worker(shards, "d", "alive"), Worker(shards, "d", "dead")
    try:
        alive.join()
        dead.join()  # ... and then never calls again, like a process killed with SIGKILL
        alive.push(0, 1.0)
        started = time.monotonic()
        values = alive.pull(1)
        waited = time.monotonic() - started
        np.testing.assert_allclose(values["w"], -LR, rtol=1e-5)  # the step applied without it
        assert 0.5 * lease < waited < lease + 2.0
        assert dict(job_info(shards[0], "d").workers) == {"alive": 1}
        with pytest.raises(grpc.RpcError) as err:  # it comes back too late: refused, not applied
            dead.push(0, 100.0)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "behind the job's synchronous step 1" in err.value.details()
    finally:
        alive.close()
        dead.close()
