"""A job's status record and its lifecycle.

    PENDING -> RUNNING -> EVALUATING -> EXPORTING -> SUCCEEDED
    any state before SUCCEEDED -> FAILED | CANCELLED

Terminal states never change again. `Job` is plain data, mutated only by the
`Coordinator` (on one event loop), and serialized whole to JSON.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from trainer_svc.core.spec import JobSpec

# Reports averaged into `Job.loss`.
LOSS_WINDOW_REPORTS = 20
# Seconds of reports averaged into `Job.examples_per_second`.
RATE_WINDOW_SECONDS = 30.0


class JobState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    EVALUATING = "EVALUATING"
    EXPORTING = "EXPORTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def active(self) -> bool:
        """Holds the trainer: only one job at a time is active."""
        return self in (JobState.RUNNING, JobState.EVALUATING, JobState.EXPORTING)


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    state: JobState = JobState.PENDING
    steps: int = 0
    examples: int = 0
    loss: float = 0.0
    examples_per_second: float = 0.0
    tasks_total: int = 0
    tasks_completed: int = 0
    eval_metrics: dict[str, float] = field(default_factory=dict)
    export_path: str = ""
    model_version: int = 0
    error: str = ""
    created_unix: float = field(default_factory=time.time)
    started_unix: float = 0.0
    finished_unix: float = 0.0
    train_seconds: float = 0.0
    active_workers: int = 0
    epochs_completed: int = 0
    epochs_exported: int = 0  # continuous: versions exported as epochs completed
    # Terminal jobs: the shards freed its state (DropJob) after its final checkpoint.
    released: bool = False
    # Not persisted: recent reports, for the moving loss and rate.
    _losses: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=LOSS_WINDOW_REPORTS), repr=False
    )
    _rates: collections.deque[tuple[float, int]] = field(default_factory=collections.deque, repr=False)

    def record_progress(self, now: float, steps: int, examples: int, loss_sum: float) -> None:
        """Add one worker report (deltas since its previous report)."""
        self.steps += steps
        self.examples += examples
        if steps > 0:
            self._losses.append((loss_sum, steps))
            total_steps = sum(n for _, n in self._losses)
            self.loss = sum(s for s, _ in self._losses) / total_steps
        self._rates.append((now, examples))
        window_start = max(self.started_unix, now - RATE_WINDOW_SECONDS)
        while self._rates and self._rates[0][0] <= window_start:
            self._rates.popleft()
        if now > window_start:
            # Reports cover the seconds before them, so the window is (start, now].
            self.examples_per_second = sum(n for _, n in self._rates) / (now - window_start)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "spec": self.spec.to_dict(),
            "state": self.state.value,
            "steps": self.steps,
            "examples": self.examples,
            "loss": self.loss,
            "examples_per_second": self.examples_per_second,
            "tasks_total": self.tasks_total,
            "tasks_completed": self.tasks_completed,
            "eval_metrics": dict(self.eval_metrics),
            "export_path": self.export_path,
            "model_version": self.model_version,
            "error": self.error,
            "created_unix": self.created_unix,
            "started_unix": self.started_unix,
            "finished_unix": self.finished_unix,
            "train_seconds": self.train_seconds,
            "epochs_completed": self.epochs_completed,
            "epochs_exported": self.epochs_exported,
            "released": self.released,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        data = dict(data)
        data["spec"] = JobSpec.from_dict(data["spec"])
        data["state"] = JobState(data["state"])
        return cls(**data)
