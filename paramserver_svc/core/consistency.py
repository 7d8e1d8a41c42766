"""When a push may be applied: the consistency model of a job.

Today every job is asynchronous (apply on arrival, once per
(worker, step)). The seam for bulk-synchronous and bounded-staleness jobs is
`ConsistencyPolicy.admit`: a sync policy would answer WAIT until every live
worker pushed step t (and buffer or sum the gradients meanwhile), a bounded
one WAIT while the pusher is more than s clocks ahead of the slowest live
worker. The shard already calls it under the job lock with the job's clocks,
so those policies plug in without touching the store or the update rules.
"""

from __future__ import annotations

import enum
from typing import Protocol


class Admission(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"
    # Reserved for sync / bounded staleness: the push must wait for slower workers.
    WAIT = "wait"


class WorkerClocks:
    """Last applied step per worker of one job.

    Not thread-safe: guarded by the job's lock. Checkpointed with the job, so a
    retried push is still recognised after a shard restarts.
    """

    def __init__(self, last: dict[str, int] | None = None) -> None:
        self._last: dict[str, int] = dict(last or {})

    def last(self, worker_id: str) -> int:
        """-1 for a worker never seen (steps start at 0)."""
        return self._last.get(worker_id, -1)

    def record(self, worker_id: str, step: int) -> None:
        self._last[worker_id] = max(step, self.last(worker_id))

    def as_dict(self) -> dict[str, int]:
        return dict(self._last)

    def slowest(self) -> int:
        return min(self._last.values(), default=-1)


class ConsistencyPolicy(Protocol):
    name: str

    def admit(self, clocks: WorkerClocks, worker_id: str, step: int) -> Admission:
        """Decide about a push; called with the job lock held, before anything is applied."""
        ...


class AsyncPolicy:
    """Apply on arrival; a step not above the worker's last applied one is a duplicate
    (a retry, or a stale push from a worker that was replaced), acknowledged and ignored."""

    name = "async"

    def admit(self, clocks: WorkerClocks, worker_id: str, step: int) -> Admission:
        return Admission.APPLY if step > clocks.last(worker_id) else Admission.DUPLICATE
