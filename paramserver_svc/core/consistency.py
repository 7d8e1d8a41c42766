"""When a pull may proceed and a push may apply: a job's consistency model.

Vocabulary. Every training worker has a *clock* on each shard: the number of
steps it has pushed there, i.e. the step it computes next. It pulls with
that clock and pushes the step's gradients under it. A worker is *live*
while its lease holds; every call renews it, JoinJob enters and LeaveJob
removes it, and a worker not heard from for `worker_lease_seconds` drops out
on its own, so a dead worker never hangs the job.

- ASYNC: pushes apply on arrival; pulls never wait.
- SYNC (bulk-synchronous): the shard aggregates one step at a time, `clock`.
  Pushes for it are summed in a `Barrier`; once every live worker has pushed
  it, their mean is applied as one update and `clock` advances. A pull for
  step c waits until `clock >= c`. A push for a step below `clock` comes
  from a worker that dropped out (its lease expired): FAILED_PRECONDITION,
  and the worker rejoins at the current clock.
- BOUNDED(s) (stale-synchronous): pushes apply on arrival; a worker at clock
  c may pull only when the slowest live worker has reached c - s, and a push
  for a step beyond slowest + s is FAILED_PRECONDITION.

Restarts. A shard restored from an older checkpoint is behind the workers.
A worker's call names its clock, which tells the shard what it lost: a pull
for c means the worker's pushes before c were acknowledged (in SYNC the
shard had therefore aggregated up to c - 1), a push for c that the shard
had reached c. The shard skips ahead to what the worker proves and counts
the steps it lost (`lost_steps`), instead of waiting forever for pushes
that were already made.

Not thread-safe: guarded by the job's lock. Pure: callers pass the time.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from mlmesh.errors import FailedPrecondition, InvalidArgument

from paramserver_svc.core.specs import JobConfig, Mode


class Admission(enum.Enum):
    APPLY = "apply"  # apply now (ASYNC, BOUNDED)
    BUFFER = "buffer"  # add to the barrier of the current step (SYNC)
    DUPLICATE = "duplicate"  # already applied or buffered: acknowledge, change nothing


@dataclass
class Barrier:
    """SYNC: the summed gradients of the step being aggregated.

    `dense` maps a variable name to the sum of its gradients; `rows` to the
    (local row ids, gradient rows) parts pushed, summed when the step is
    taken. `contributors` counts pushes with data; a skipped (non-finite)
    push still counts as the worker's part of the step, without data.
    """

    dense: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    workers: set[str] = field(default_factory=set)
    contributors: int = 0

    def add(
        self,
        worker_id: str,
        dense: Mapping[str, np.ndarray],
        rows: Mapping[str, tuple[np.ndarray, np.ndarray]],
    ) -> None:
        self.workers.add(worker_id)
        self.contributors += 1
        for name, grad in dense.items():
            acc = self.dense.get(name)
            if acc is None:
                self.dense[name] = np.array(grad, dtype=grad.dtype, copy=True)
            else:
                acc += grad
        for name, part in rows.items():
            self.rows.setdefault(name, []).append(part)

    def mark(self, worker_id: str) -> None:
        """The worker took part in the step without data (its push was skipped)."""
        self.workers.add(worker_id)

    @property
    def empty(self) -> bool:
        return not self.workers


@dataclass
class ClockState:
    """What a checkpoint keeps of `Clocks` (the barrier is saved beside it)."""

    clocks: dict[str, int] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)
    clock: int = 0
    lost_steps: int = 0


class Clocks:
    """Worker clocks, leases and (SYNC) the step being aggregated, of one job on one shard."""

    def __init__(self, config: JobConfig, state: ClockState | None = None, now: float = 0.0) -> None:
        state = state or ClockState()
        self.config = config
        self.next: dict[str, int] = dict(state.clocks)
        # Live workers -> lease deadline. Restored workers get a fresh lease: a shard that
        # restarted must not run a SYNC step without the workers that were in it.
        self.deadline: dict[str, float] = {w: now + config.worker_lease_seconds for w in state.live}
        self.clock = state.clock
        self.lost_steps = state.lost_steps
        self.barrier = Barrier()

    # -- membership -----------------------------------------------------------------------

    def touch(self, worker_id: str, now: float) -> None:
        self.deadline[worker_id] = now + self.config.worker_lease_seconds

    def leave(self, worker_id: str) -> bool:
        return self.deadline.pop(worker_id, None) is not None

    def expire(self, now: float) -> list[str]:
        gone = [w for w, d in self.deadline.items() if d < now]
        for w in gone:
            del self.deadline[w]
        return gone

    def live(self) -> list[str]:
        return sorted(self.deadline)

    def slowest(self, besides: str = "") -> int | None:
        """The lowest clock among live workers other than `besides` (None when there are none)."""
        return min((self.next.get(w, 0) for w in self.deadline if w != besides), default=None)

    def join(self, worker_id: str, now: float) -> int:
        """Enter the barrier; the clock the worker continues from."""
        mode = self.config.mode
        own = self.next.get(worker_id, 0)
        if mode is Mode.SYNC:
            start = max(own, self.clock)
        elif mode is Mode.BOUNDED:
            slowest = self.slowest(besides=worker_id)
            # A newcomer starts level with the slowest live worker: it neither waits for the
            # others to come back to it nor holds them up.
            start = own if slowest is None else max(own, slowest)
        else:
            start = own
        self.next[worker_id] = start
        self.touch(worker_id, now)
        return start

    # -- pull -----------------------------------------------------------------------------

    def pull_ready(self, worker_id: str, clock: int, pushed: int, now: float) -> bool:
        """Whether a pull for step `clock` may proceed now, from a worker whose first
        `pushed` steps were acknowledged (in SYNC, take complete steps first)."""
        if not 0 <= pushed <= clock:
            raise InvalidArgument(
                f"worker {worker_id!r} pulled for step {clock} with {pushed} steps pushed; "
                "expected 0 <= pushed <= clock"
            )
        self.touch(worker_id, now)
        if pushed > self.next.get(worker_id, 0):
            self.next[worker_id] = pushed  # its pushes before `pushed` were acknowledged: we lost them
        mode = self.config.mode
        if mode is Mode.SYNC:
            self._skip_to(pushed - 1)
            return self.clock >= clock
        if mode is Mode.BOUNDED:
            slowest = self.slowest()
            return slowest is None or slowest >= clock - self.config.staleness
        return True

    def response_clock(self, worker_id: str) -> int:
        """What a pull answers as `clock`: SYNC the step aggregated now, else the worker's own."""
        if self.config.mode is Mode.SYNC:
            return self.clock
        return self.next.get(worker_id, 0)

    # -- push -----------------------------------------------------------------------------

    def admit(self, worker_id: str, step: int, now: float) -> Admission:
        """Decide about a push for `step`; records the worker's new clock unless DUPLICATE.

        Raises FailedPrecondition when the push falls outside the model's bound.
        """
        self.touch(worker_id, now)
        if step < self.next.get(worker_id, 0):
            return Admission.DUPLICATE
        mode = self.config.mode
        if mode is Mode.SYNC:
            if step < self.clock:
                raise FailedPrecondition(
                    f"push of step {step} from worker {worker_id!r} is behind the job's synchronous "
                    f"step {self.clock} (the worker dropped out of the barrier); join again"
                )
            self._skip_to(step)
            self.next[worker_id] = step + 1
            return Admission.BUFFER
        if mode is Mode.BOUNDED:
            slowest = self.slowest(besides=worker_id)
            if slowest is not None and step > slowest + self.config.staleness:
                raise FailedPrecondition(
                    f"push of step {step} from worker {worker_id!r} is beyond the staleness bound: the "
                    f"slowest live worker is at clock {slowest} and the bound is {self.config.staleness}"
                )
        self.next[worker_id] = step + 1
        return Admission.APPLY

    # -- SYNC -----------------------------------------------------------------------------

    def step_complete(self) -> bool:
        """SYNC: whether the current step can be taken: every live worker has pushed it, or
        nobody is left to push and the barrier holds something."""
        if self.config.mode is not Mode.SYNC:
            return False
        if not self.deadline:
            return not self.barrier.empty
        return all(self.next.get(w, 0) > self.clock for w in self.deadline)

    def take(self) -> Barrier:
        """SYNC: close the current step (the caller applies what it returns) and move on."""
        done = self.barrier
        if done.empty:
            self.lost_steps += 1  # its pushes reached this shard before a restart
        self.barrier = Barrier()
        self.clock += 1
        return done

    def _skip_to(self, step: int) -> None:
        """SYNC: a worker proved the shard had reached `step`; skip there, counting the loss."""
        if step > self.clock:
            self.lost_steps += step - self.clock
            self.clock = step
            self.barrier = Barrier()

    # -- checkpoints ----------------------------------------------------------------------

    def state(self) -> ClockState:
        return ClockState(dict(self.next), self.live(), self.clock, self.lost_steps)
