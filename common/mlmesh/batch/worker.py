"""One worker of a transform job's pool.

    lease partitions of the source (`mlmesh.feed`: read ahead, one heartbeat) -> apply the
    transform -> append the output to the target and complete the task in one commit -> ...

Exactly once per partition: the output of a task lands only together with its completion
(`AppendRequest.complete_lease_id`), so an attempt whose lease lapsed writes nothing, and a
retried append of an attempt that did land is refused (ALREADY_EXISTS) instead of writing
twice. Workers can join and leave at any time: a killed worker's leases lapse and its
partitions go to the others. A worker ends when the job's queue is done (or, with
`follow`, runs until stopped, idling while no partition is pending).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter

from mlmesh.batch.client import QueueClient, Task
from mlmesh.errors import AlreadyExists, FailedPrecondition, NotFound
from mlmesh.feed import IDLE, PartitionFeed
from mlmesh.logging import get_logger
from mlmesh.transform import Schema, TransformSpec, load_transform

log = get_logger(__name__)

TASKS = Counter(
    "mlmesh_transform_tasks_total",
    "Transform tasks by outcome: committed (output landed with the completion), already (an "
    "earlier attempt of the same lease landed), lease_lost (nothing written; the partition "
    "went back to the queue)",
    ["outcome"],
)
RECORDS = Counter("mlmesh_transform_records_total", "Records written to target datasets", ["kind"])


@dataclass
class WorkerStats:
    committed: int = 0
    lost: int = 0
    records_in: int = 0
    records_out: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"transform": 0.0, "append": 0.0})


async def run_worker(
    client: QueueClient,
    job_id: str,
    worker_id: str,
    target: str,
    transform_path: str,
    source_schema: Schema,
    args: Mapping[str, str],
    *,
    depth: int = 2,
    lease_seconds: float = 30.0,
    poll_seconds: float = 0.5,
    follow: bool = False,
    stop: asyncio.Event | None = None,
) -> WorkerStats:
    spec = load_transform(transform_path, source_schema, args)
    stats = WorkerStats()
    stop = stop or asyncio.Event()
    while not stop.is_set():
        feed: PartitionFeed[dict[str, np.ndarray]] = PartitionFeed(
            client,
            job_id,
            worker_id,
            load=client.read_partition,
            depth=depth,
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
        )
        try:
            await _items(feed, spec, client, target, stats, stop)
        except NotFound as e:  # started before the job was enqueued: wait for it
            log.warning("job not in the queue yet; waiting", job_id=job_id, error=e.message)
            await asyncio.sleep(poll_seconds)
            continue
        if not follow:
            break
        await asyncio.sleep(poll_seconds)  # the job may get new partitions: look again
    return stats


async def _items(
    feed: PartitionFeed[dict[str, np.ndarray]],
    spec: TransformSpec,
    client: QueueClient,
    target: str,
    stats: WorkerStats,
    stop: asyncio.Event,
) -> None:
    """Transform and commit the feed's partitions until it ends (or `stop`)."""
    async with feed:
        async for item in feed:
            if stop.is_set():
                break
            if item is IDLE:
                continue
            task: Task = item.task
            t0 = time.perf_counter()
            # In a thread: user code may be slow, and the heartbeat must keep the lease.
            out = await asyncio.to_thread(spec.apply, item.data or {}, f"task {task.task_id}")
            t1 = time.perf_counter()
            stats.seconds["transform"] += t1 - t0
            if item.lost:
                feed.drop(item)
                _lost(stats, task, "lease lapsed while transforming")
                continue
            n_out = len(next(iter(out.values()))) if out else 0
            try:
                await client.append_output(target, task.lease_id, out)
                TASKS.labels("committed").inc()
                stats.committed += 1
            except AlreadyExists:  # a retry of an append that had landed
                TASKS.labels("already").inc()
                stats.committed += 1
            except FailedPrecondition as e:
                _lost(stats, task, e.message)
                continue
            finally:
                feed.drop(item)  # the append settled the lease: stop renewing it
                stats.seconds["append"] += time.perf_counter() - t1
            stats.records_in += task.num_records
            stats.records_out += n_out
            RECORDS.labels("in").inc(task.num_records)
            RECORDS.labels("out").inc(n_out)


def _lost(stats: WorkerStats, task: Task, why: str) -> None:
    TASKS.labels("lease_lost").inc()
    stats.lost += 1
    log.warning("task lost; nothing written", task=task.task_id, reason=why)
