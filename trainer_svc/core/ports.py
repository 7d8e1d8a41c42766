"""What the core needs from the other services, as protocols.

The gRPC implementations live in `trainer_svc.clients`. They retry
UNAVAILABLE with backoff (within a bound) and raise `mlmesh.errors` domain
errors (NotFound, FailedPrecondition, Unavailable, ...) for the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from trainer_svc.core.types import (
    DatasetInfo,
    JobOptions,
    OptimizerConfig,
    PartitionInfo,
    PullResult,
    QueueInfo,
    ShardInfo,
    TaskInfo,
    VariableSpec,
)


class IngestPort(Protocol):
    async def get_dataset(self, name: str) -> DatasetInfo: ...

    async def list_partitions(self, dataset: str) -> list[PartitionInfo]: ...

    async def read_partition(
        self, dataset: str, partition_id: int, num_records: int = -1
    ) -> dict[str, np.ndarray]:
        """All records of one partition, column by column (`num_records`, when known,
        lets the client allocate the columns up front and check the count)."""
        ...

    async def enqueue_epoch(
        self, job_id: str, dataset: str, epoch: int, seed: int, since_unix: float = 0.0
    ) -> QueueInfo:
        """Idempotent per (job, epoch); `since_unix` keeps only partitions that arrived since."""
        ...

    async def queue_status(self, job_id: str) -> QueueInfo: ...

    async def lease_tasks(
        self,
        job_id: str,
        worker_id: str,
        lease_seconds: float,
        max_tasks: int = 1,
        complete: Sequence[str] = (),
    ) -> tuple[list[TaskInfo], QueueInfo]:
        """Up to `max_tasks` tasks, each under its own lease (none when nothing is pending),
        after completing the leases in `complete` in the same commit (all or nothing)."""
        ...

    async def extend_lease(self, lease_id: str, lease_seconds: float) -> float: ...

    async def complete_task(self, lease_id: str) -> QueueInfo: ...

    async def lease_state(self, lease_id: str) -> str:
        """ "active", "expired" or "completed"."""
        ...


class ParamPort(Protocol):
    """The shards of one job's parameter server, addressed by shard index."""

    @property
    def num_shards(self) -> int: ...

    async def register(
        self,
        shard: int,
        job_id: str,
        variables: Sequence[VariableSpec],
        optimizer: OptimizerConfig,
        options: JobOptions | None = None,
    ) -> None: ...

    async def join(self, shard: int, job_id: str, worker_id: str) -> int:
        """Enter the job's barrier; the clock the worker continues from."""
        ...

    async def leave(self, shard: int, job_id: str, worker_id: str) -> None: ...

    async def pull(
        self,
        shard: int,
        job_id: str,
        dense: Sequence[str],
        rows: Mapping[str, np.ndarray],
        worker_id: str = "",
        clock: int = 0,
        pushed: int = 0,
        stream: bool = False,
    ) -> PullResult:
        """A worker's pull (worker_id set) waits as the job's consistency model says;
        `stream` asks for the answer in chunks (for several MiB of values)."""
        ...

    async def push(
        self,
        shard: int,
        job_id: str,
        worker_id: str,
        step: int,
        dense_grads: Mapping[str, np.ndarray],
        row_grads: Mapping[str, tuple[np.ndarray, np.ndarray]],
        lease: tuple[str, str] = ("", ""),
    ) -> bool:
        """Returns whether the shard took it (False: a duplicate step). An exactly-once job's
        push names its task's (lease id, task id)."""
        ...

    async def commit_lease(self, shard: int, job_id: str, lease_id: str, task_id: str) -> int: ...

    async def abort_lease(self, shard: int, job_id: str, lease_id: str) -> int: ...

    async def save_checkpoint(self, shard: int, job_id: str) -> None: ...

    async def drop_job(self, shard: int, job_id: str, force: bool = False) -> bool:
        """Free a finished job's state on the shard after a final checkpoint (idempotent);
        whether it was dropped now (False: dropped before, or never there)."""
        ...

    async def shard_info(self, shard: int) -> ShardInfo:
        """The variables the shard holds (of every job), with their global shapes."""
        ...
