"""What a variable, an initializer and an optimizer are, validated.

Immutable value objects: safe to share between threads.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from mlmesh import keys
from mlmesh.errors import InvalidArgument

OPTIMIZER_KINDS = ("sgd", "momentum", "adam", "adagrad")
INITIALIZER_KINDS = (
    "value",
    "zeros",
    "ones",
    "constant",
    "random_normal",
    "random_uniform",
    "glorot_uniform",
)
# Keras defaults, so a job trained here matches the same optimizer run locally.
DEFAULT_BETA_1 = 0.9
DEFAULT_BETA_2 = 0.999
DEFAULT_EPSILON = 1e-7
DEFAULT_MOMENTUM = 0.9
MAX_NAME_CHARS = 1024
DEFAULT_WORKER_LEASE_SECONDS = 10.0
MAX_STALENESS = 1_000_000


def describe_shape(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    """Human form such as 'float32[32,64]'."""
    return f"{np.dtype(dtype).name}[{','.join(str(d) for d in shape)}]"


def check_job_id(job_id: str) -> None:
    if not job_id:
        raise InvalidArgument("job_id is empty; every request names its job")
    if len(job_id) > MAX_NAME_CHARS:
        raise InvalidArgument(f"job_id has {len(job_id)} characters; at most {MAX_NAME_CHARS} allowed")


@dataclass(frozen=True)
class VarSpec:
    """A variable as the job declares it. `shape` is the global shape."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    row_sharded: bool = False
    # How the rows of a row-sharded variable map to shards (ignored for a dense one).
    layout: keys.RowLayout = keys.RowLayout.HASH

    def describe(self) -> str:
        kind = f"row-sharded ({self.layout.value})" if self.row_sharded else "dense"
        return f"{kind} {describe_shape(self.dtype, self.shape)}"

    def placement(self, num_shards: int) -> keys.RowPlacement:
        return keys.row_placement(self.shape[0], num_shards, self.layout)

    @property
    def is_floating(self) -> bool:
        return bool(np.issubdtype(self.dtype, np.floating))

    def validate(self) -> None:
        if not self.name:
            raise InvalidArgument("a variable has an empty name")
        if len(self.name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"variable name has {len(self.name)} characters; at most {MAX_NAME_CHARS}")
        if any(d < 0 for d in self.shape):
            raise InvalidArgument(
                f"variable {self.name!r} has a negative dimension in shape {list(self.shape)}"
            )
        if self.row_sharded and not self.shape:
            raise InvalidArgument(
                f"variable {self.name!r} is row-sharded but is a scalar; it needs shape [rows, ...]"
            )


@dataclass(frozen=True)
class InitSpec:
    """How a newly created variable gets its first value (ignored for an existing one).

    `value` (kind "value") is this shard's slice: [local_rows, ...] for a
    row-sharded variable, the full shape for a dense one.
    """

    kind: str = "zeros"
    scale: float = 0.0
    seed: int = 0
    value: np.ndarray | None = None

    def validate(self, var: VarSpec) -> None:
        if self.kind not in INITIALIZER_KINDS:
            raise InvalidArgument(
                f"variable {var.name!r} has initializer kind {self.kind!r}; "
                f"expected one of {list(INITIALIZER_KINDS)}"
            )
        if not math.isfinite(self.scale):
            raise InvalidArgument(f"variable {var.name!r} has a non-finite initializer scale {self.scale}")
        if self.kind.startswith(("random", "glorot")) and not var.is_floating:
            raise InvalidArgument(
                f"variable {var.name!r} is {var.dtype.name}; initializer {self.kind!r} needs a floating dtype"
            )
        if self.kind == "value" and self.value is None:
            raise InvalidArgument(f"variable {var.name!r} has initializer 'value' but no value tensor")


@dataclass(frozen=True)
class OptimizerConfig:
    """A job's optimizer, with defaults filled in: two configs compare equal
    exactly when they update variables the same way."""

    kind: str
    learning_rate: float
    beta_1: float = 0.0
    beta_2: float = 0.0
    epsilon: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False

    @classmethod
    def parse(
        cls,
        kind: str,
        learning_rate: float,
        beta_1: float = 0.0,
        beta_2: float = 0.0,
        epsilon: float = 0.0,
        momentum: float = 0.0,
        nesterov: bool = False,
    ) -> OptimizerConfig:
        """Validate and normalise; zero betas/epsilon/momentum mean the Keras defaults
        (proto3 cannot tell 0 from unset), and fields a kind ignores are zeroed."""
        if kind not in OPTIMIZER_KINDS:
            raise InvalidArgument(
                f"optimizer kind {kind!r} is not supported; expected one of {list(OPTIMIZER_KINDS)}"
            )
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise InvalidArgument(f"optimizer learning_rate must be a finite number > 0, got {learning_rate}")
        for field, val in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not (math.isfinite(val) and 0 <= val < 1):
                raise InvalidArgument(f"optimizer {field} must be in [0, 1), got {val}")
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise InvalidArgument(f"optimizer epsilon must be a finite number >= 0, got {epsilon}")
        if not (math.isfinite(momentum) and 0 <= momentum < 1):
            raise InvalidArgument(f"optimizer momentum must be in [0, 1), got {momentum}")
        if kind == "sgd":
            return cls(kind, float(learning_rate))
        if kind == "momentum":
            return cls(
                kind, float(learning_rate), momentum=float(momentum) or DEFAULT_MOMENTUM, nesterov=nesterov
            )
        eps = float(epsilon) or DEFAULT_EPSILON
        if kind == "adagrad":
            return cls(kind, float(learning_rate), epsilon=eps)
        return cls(
            kind, float(learning_rate), float(beta_1) or DEFAULT_BETA_1, float(beta_2) or DEFAULT_BETA_2, eps
        )

    def describe(self) -> str:
        if self.kind == "sgd":
            return f"sgd(learning_rate={self.learning_rate:g})"
        if self.kind == "momentum":
            return (
                f"momentum(learning_rate={self.learning_rate:g}, momentum={self.momentum:g}, "
                f"nesterov={self.nesterov})"
            )
        if self.kind == "adagrad":
            return f"adagrad(learning_rate={self.learning_rate:g}, epsilon={self.epsilon:g})"
        return (
            f"adam(learning_rate={self.learning_rate:g}, beta_1={self.beta_1:g}, "
            f"beta_2={self.beta_2:g}, epsilon={self.epsilon:g})"
        )


def local_shape(var: VarSpec, shard_index: int, num_shards: int) -> tuple[int, ...]:
    """Shape of this shard's part: the whole of a dense variable, the owned rows of a row-sharded one."""
    if not var.row_sharded:
        return var.shape
    return (var.placement(num_shards).count(shard_index), *var.shape[1:])


class Mode(enum.Enum):
    """A job's consistency model (see `paramserver_svc.core.consistency`)."""

    ASYNC = "async"
    SYNC = "sync"
    BOUNDED = "bounded"


@dataclass(frozen=True)
class JobConfig:
    """How a job's pushes are admitted: fixed when the job is first registered on a shard."""

    mode: Mode = Mode.ASYNC
    staleness: int = 0
    worker_lease_seconds: float = DEFAULT_WORKER_LEASE_SECONDS
    skip_nonfinite: bool = False
    exactly_once: bool = False  # ASYNC only: pushes staged per task lease until it commits

    @classmethod
    def parse(
        cls,
        mode: Mode,
        staleness: int = 0,
        worker_lease_seconds: float = 0.0,
        skip_nonfinite: bool = False,
        exactly_once: bool = False,
    ) -> JobConfig:
        """Validate; a zero lease means the default (proto3 cannot tell 0 from unset)."""
        if not 0 <= staleness <= MAX_STALENESS:
            raise InvalidArgument(f"staleness must be in 0..{MAX_STALENESS}, got {staleness}")
        if mode is not Mode.BOUNDED and staleness:
            raise InvalidArgument(f"staleness {staleness} is only meaningful for bounded consistency")
        if not (math.isfinite(worker_lease_seconds) and 0 <= worker_lease_seconds <= 86_400):
            raise InvalidArgument(
                f"worker_lease_seconds must be in [0, 86400] (0 = {DEFAULT_WORKER_LEASE_SECONDS:g} s), "
                f"got {worker_lease_seconds}"
            )
        if exactly_once and mode is not Mode.ASYNC:
            raise InvalidArgument(
                f"exactly_once needs async consistency: {mode.value} applies steps, not partitions"
            )
        lease = worker_lease_seconds or DEFAULT_WORKER_LEASE_SECONDS
        return cls(mode, staleness, lease, skip_nonfinite, exactly_once)

    def describe(self) -> str:
        mode = f"bounded:{self.staleness}" if self.mode is Mode.BOUNDED else self.mode.value
        once = ", exactly once per task" if self.exactly_once else ""
        return f"{mode} (worker lease {self.worker_lease_seconds:g} s{once})"
