"""Domain values exchanged between the core and the service ports.

Plain dataclasses of Python and NumPy values: the servicer and the gRPC
clients convert them to and from protos, the core never sees a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FeatureInfo:
    """One dataset column: NumPy dtype name and per-record shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    features: dict[str, FeatureInfo]
    num_records: int
    num_partitions: int


@dataclass(frozen=True)
class PartitionInfo:
    dataset: str
    partition_id: int
    num_records: int


@dataclass(frozen=True)
class QueueInfo:
    pending: int = 0
    leased: int = 0
    completed: int = 0
    total: int = 0
    done: bool = False
    # (epoch, pending, leased, completed, total) per enqueued epoch, in epoch order.
    epochs: tuple[tuple[int, int, int, int, int], ...] = ()


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    job_id: str
    dataset: str
    partition_id: int
    epoch: int
    num_records: int
    lease_id: str
    lease_deadline_unix: float
    attempt: int


@dataclass(frozen=True)
class OptimizerConfig:
    """The shards' update rule; `kind` is "sgd", "momentum", "adam" or "adagrad"."""

    kind: str = "adam"
    learning_rate: float = 1e-3
    beta_1: float = 0.0
    beta_2: float = 0.0
    epsilon: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class VariableSpec:
    """A variable as registered on one shard.

    `shape` is the global shape; `value` is the initial value this shard
    holds (the whole array for a dense variable, the shard's rows for a
    row-sharded one).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    row_sharded: bool
    value: np.ndarray
    layout: str = "hash"  # of a row-sharded variable: "hash" or "blocks" (mlmesh.keys.RowLayout)


@dataclass
class PullResult:
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    # name -> (global row ids, values [len(rows), *shape[1:]])
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # The shard's answer to the worker's clock (see PullResponse.clock).
    clock: int = 0


CONSISTENCY_MODES = ("async", "sync", "bounded")
MAX_STALENESS = 1_000_000


@dataclass(frozen=True)
class Consistency:
    """A job's consistency model; in text "async", "sync" or "bounded:<staleness>"."""

    mode: str = "async"
    staleness: int = 0

    @classmethod
    def parse(cls, text: str) -> Consistency:
        """ValueError naming the accepted forms when `text` is none of them."""
        mode, sep, arg = (text or "async").strip().lower().partition(":")
        if mode not in CONSISTENCY_MODES or (mode == "bounded") != bool(sep):
            raise ValueError(f"consistency {text!r} is not one of 'async', 'sync', 'bounded:<staleness>'")
        if mode != "bounded":
            return cls(mode)
        if not arg.isdigit() or not 0 <= int(arg) <= MAX_STALENESS:
            raise ValueError(
                f"consistency {text!r}: the staleness bound must be an integer in 0..{MAX_STALENESS}"
            )
        return cls(mode, int(arg))

    def __str__(self) -> str:
        return f"bounded:{self.staleness}" if self.mode == "bounded" else self.mode


@dataclass(frozen=True)
class ShardVariable:
    """A variable as one shard reports it (GetShardInfo); `shape` is the global shape."""

    job_id: str
    name: str
    shape: tuple[int, ...]
    row_sharded: bool
    layout: str = "hash"


@dataclass(frozen=True)
class ShardCheckpoint:
    path: str
    version: int
    clock: int  # SYNC: the step it was taken at


@dataclass(frozen=True)
class ShardJob:
    """A job as one shard reports it: its clock and the checkpoints it has on disk."""

    consistency: str  # "async", "sync" or "bounded"
    clock: int
    version: int
    lost_steps: int
    checkpoints: list[ShardCheckpoint] = field(default_factory=list)  # newest first
    staged: dict[str, str] = field(default_factory=dict)  # exactly-once: lease id -> task id
    applied_by_task: dict[str, int] = field(default_factory=dict)  # exactly-once: pushes committed


@dataclass(frozen=True)
class ShardInfo:
    shard_index: int
    num_shards: int
    variables: list[ShardVariable]
    jobs: dict[str, ShardJob] = field(default_factory=dict)


@dataclass(frozen=True)
class JobOptions:
    """What the shards need of a job beyond its optimizer (paramserver JobConfig)."""

    consistency: Consistency = field(default_factory=Consistency)
    worker_lease_seconds: float = 0.0
    skip_nonfinite: bool = False
    exactly_once: bool = False
