"""The asyncio ingest calls a work-queue worker makes: leases (the `mlmesh.feed` port),
partition reads, and appending a task's output together with its completion."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlmesh import records
from mlmesh.channels import aio_channel
from mlmesh.clients import APPEND_BATCH_BYTES, record_batches
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.retry import Retry


@dataclass(frozen=True)
class Task:
    task_id: str
    dataset: str
    partition_id: int
    epoch: int
    num_records: int
    lease_id: str
    lease_deadline_unix: float
    attempt: int


class QueueClient:
    def __init__(self, addr: str, retry: Retry | None = None) -> None:
        self.retry = retry or Retry()
        self.channel = aio_channel(addr, self.retry.max_message_bytes)
        self.stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self._read = self.channel.unary_stream(
            "/mlmesh.ingest.v1.IngestService/ReadPartition",
            request_serializer=ingest_pb2.ReadPartitionRequest.SerializeToString,
            response_deserializer=None,
        )
        # Append framed by hand (records.encode_append): one copy of each column.
        self._append = self.channel.stream_unary(
            "/mlmesh.ingest.v1.IngestService/Append",
            request_serializer=None,
            response_deserializer=ingest_pb2.AppendResponse.FromString,
        )

    async def close(self) -> None:
        await self.channel.close()

    async def lease_tasks(
        self, job_id: str, worker_id: str, lease_seconds: float, max_tasks: int, complete: Sequence[str] = ()
    ) -> tuple[list[Task], ingest_pb2.QueueStatus]:
        req = ingest_pb2.LeaseTaskRequest(
            job_id=job_id,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            max_tasks=max_tasks,
            complete_lease_ids=complete,
        )
        resp = await self.retry.call(
            f"ingest LeaseTask({job_id!r})", lambda: self.stub.LeaseTask(req, timeout=self.retry.timeout)
        )
        tasks = [
            Task(
                t.task_id,
                t.dataset,
                t.partition_id,
                t.epoch,
                t.num_records,
                t.lease_id,
                t.lease_deadline_unix,
                t.attempt,
            )
            for t in resp.tasks
        ]
        return tasks, resp.status

    async def extend_lease(self, lease_id: str, lease_seconds: float) -> float:
        req = ingest_pb2.ExtendLeaseRequest(lease_id=lease_id, lease_seconds=lease_seconds)
        resp = await self.retry.call(
            "ingest ExtendLease", lambda: self.stub.ExtendLease(req, timeout=self.retry.timeout)
        )
        return float(resp.lease_deadline_unix)

    async def complete_task(self, lease_id: str) -> ingest_pb2.QueueStatus:
        req = ingest_pb2.CompleteTaskRequest(lease_id=lease_id)
        resp = await self.retry.call(
            "ingest CompleteTask", lambda: self.stub.CompleteTask(req, timeout=self.retry.timeout)
        )
        return resp.status

    async def read_partition(self, task: Task) -> dict[str, np.ndarray]:
        req = ingest_pb2.ReadPartitionRequest(dataset=task.dataset, partition_id=task.partition_id)
        what = f"partition {task.partition_id} of {task.dataset!r}"
        return await self.retry.call(
            f"ingest ReadPartition({task.dataset!r}, {task.partition_id})",
            lambda: records.gather(
                self._read(req, timeout=self.retry.stream_timeout), task.num_records, what
            ),
        )

    async def append_output(
        self, dataset: str, lease_id: str, columns: Mapping[str, np.ndarray]
    ) -> ingest_pb2.AppendResponse:
        """Append a task's output and complete the task in one commit (AlreadyExists: an earlier
        attempt of this call landed; FailedPrecondition: the lease lapsed, nothing written)."""

        def requests() -> Iterator[bytes]:
            yield ingest_pb2.AppendRequest(dataset=dataset, complete_lease_id=lease_id).SerializeToString()
            if columns and len(next(iter(columns.values()))):
                for batch in record_batches(columns, APPEND_BATCH_BYTES):
                    yield records.encode_append(batch)

        return await self.retry.call(
            f"ingest Append({dataset!r}) of a task's output",
            lambda: self._append(requests(), timeout=self.retry.stream_timeout),
        )
