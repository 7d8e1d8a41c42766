"""A job's specification: validation, defaults and its JSON form.

`validate_spec` checks everything that needs no remote call or TensorFlow
(field ranges, names, optimizer) and returns the normalized spec: optimizer
defaults filled in, so that two requests meaning the same job compare equal.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mlmesh.errors import InvalidArgument

from trainer_svc.core.types import Consistency, JobOptions, OptimizerConfig

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad")
MAX_WORKER_LEASE_SECONDS = 86_400.0
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 65536

# Filled in when a request leaves them 0 (proto3 cannot tell 0 from unset).
DEFAULT_LEARNING_RATE = 1e-3
ADAM_DEFAULTS = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
ADAGRAD_EPSILON = 1e-7
DEFAULT_MOMENTUM = 0.9
MAX_WINDOW_HOURS = 24 * 366


@dataclass(frozen=True)
class JobSpec:
    model: str
    train_dataset: str
    epochs: int
    batch_size: int
    model_name: str
    model_args: dict[str, str] = field(default_factory=dict)
    eval_dataset: str = ""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = 0
    eval_max_records: int = 0
    # "async", "sync" or "bounded:<s>" (normalized by validate_spec).
    consistency: str = "async"
    worker_lease_seconds: float = 0.0  # 0: the shards' default
    skip_nonfinite_pushes: bool = False
    # Growing datasets: epochs enqueued one at a time, a version exported after each.
    continuous: bool = False
    window_hours: float = 0.0  # with continuous: only partitions this recent (0 = all)
    exactly_once: bool = False  # ASYNC: a partition's updates applied once, when its task completes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def options(self) -> JobOptions:
        """The shards' part of the spec (the spec must be validated)."""
        return JobOptions(
            Consistency.parse(self.consistency),
            self.worker_lease_seconds,
            self.skip_nonfinite_pushes,
            self.exactly_once,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        data["optimizer"] = OptimizerConfig(**data.get("optimizer", {}))
        data["model_args"] = dict(data.get("model_args", {}))
        return cls(**data)


def valid_name(name: str) -> bool:
    """A name usable as one path component (job ids, model names)."""
    return bool(NAME_RE.match(name)) and name not in {".", ".."}


def validate_job_id(job_id: str) -> None:
    if not valid_name(job_id):
        raise InvalidArgument(
            f"job_id {job_id!r} is invalid: expected 1-128 characters of letters, digits, '.', '_', '-' "
            "starting with a letter or digit"
        )


def _normalize_optimizer(opt: OptimizerConfig) -> OptimizerConfig:
    if not opt.kind and opt.learning_rate == 0 and opt.beta_1 == 0 and opt.beta_2 == 0 and opt.epsilon == 0:
        opt = OptimizerConfig()  # no optimizer given: Adam with its defaults
    kind = opt.kind.lower()
    if kind not in OPTIMIZERS:
        raise InvalidArgument(
            f"optimizer.kind {opt.kind!r} is not supported; expected one of {list(OPTIMIZERS)}"
        )
    values = {
        "learning_rate": opt.learning_rate,
        "beta_1": opt.beta_1,
        "beta_2": opt.beta_2,
        "epsilon": opt.epsilon,
        "momentum": opt.momentum,
    }
    for key, value in values.items():
        if not math.isfinite(value):
            raise InvalidArgument(f"optimizer.{key} must be finite, got {value}")
    lr = opt.learning_rate or DEFAULT_LEARNING_RATE
    if lr < 0 or lr > 10:
        raise InvalidArgument(f"optimizer.learning_rate must be in (0, 10], got {opt.learning_rate}")
    if kind == "adam":
        b1 = opt.beta_1 or ADAM_DEFAULTS["beta_1"]
        b2 = opt.beta_2 or ADAM_DEFAULTS["beta_2"]
        eps = opt.epsilon or ADAM_DEFAULTS["epsilon"]
        for key, value in (("beta_1", b1), ("beta_2", b2)):
            if not 0 < value < 1:
                raise InvalidArgument(f"optimizer.{key} must be in (0, 1), got {value}")
    elif kind == "adagrad":
        b1, b2, eps = 0.0, 0.0, opt.epsilon or ADAGRAD_EPSILON
    else:
        b1, b2, eps = 0.0, 0.0, 0.0
    if eps < 0:
        raise InvalidArgument(f"optimizer.epsilon must be >= 0, got {opt.epsilon}")
    momentum, nesterov = 0.0, False
    if kind == "momentum":
        momentum, nesterov = opt.momentum or DEFAULT_MOMENTUM, opt.nesterov
        if not 0 < momentum < 1:
            raise InvalidArgument(f"optimizer.momentum must be in (0, 1), got {opt.momentum}")
    return OptimizerConfig(
        kind=kind,
        learning_rate=lr,
        beta_1=b1,
        beta_2=b2,
        epsilon=eps,
        momentum=momentum,
        nesterov=nesterov,
    )


def validate_spec(spec: JobSpec) -> JobSpec:
    """Check the fields of a spec; return it normalized. Raises InvalidArgument."""
    if not spec.model:
        raise InvalidArgument("spec.model is required: an import path 'package.module:function'")
    if not spec.train_dataset:
        raise InvalidArgument("spec.train_dataset is required")
    if not 1 <= spec.epochs <= MAX_EPOCHS:
        raise InvalidArgument(f"spec.epochs must be in 1..{MAX_EPOCHS}, got {spec.epochs}")
    if not 1 <= spec.batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgument(f"spec.batch_size must be in 1..{MAX_BATCH_SIZE}, got {spec.batch_size}")
    if not spec.model_name:
        raise InvalidArgument("spec.model_name is required: the name to export the model under")
    if not valid_name(spec.model_name):
        raise InvalidArgument(
            f"spec.model_name {spec.model_name!r} is not a valid directory name: expected 1-128 characters "
            "of letters, digits, '.', '_', '-' starting with a letter or digit"
        )
    if spec.eval_max_records < 0:
        raise InvalidArgument(f"spec.eval_max_records must be >= 0 (0 = all), got {spec.eval_max_records}")
    for key in spec.model_args:
        if not key.isidentifier():
            raise InvalidArgument(f"spec.model_args key {key!r} is not a valid Python identifier")
    try:
        consistency = Consistency.parse(spec.consistency)
    except ValueError as e:
        raise InvalidArgument(f"spec.{e}") from None
    if not (math.isfinite(spec.window_hours) and 0 <= spec.window_hours <= MAX_WINDOW_HOURS):
        raise InvalidArgument(
            f"spec.window_hours must be in [0, {MAX_WINDOW_HOURS:g}] (0 = all data), got {spec.window_hours}"
        )
    if spec.exactly_once and consistency.mode != "async":
        raise InvalidArgument(
            f"spec.exactly_once needs async consistency, not {spec.consistency!r}: "
            "sync and bounded apply steps, exactly-once applies whole partitions"
        )
    if spec.window_hours and not spec.continuous:
        raise InvalidArgument("spec.window_hours needs spec.continuous: a fixed job trains on all its data")
    lease = spec.worker_lease_seconds
    if not (math.isfinite(lease) and 0 <= lease <= MAX_WORKER_LEASE_SECONDS):
        raise InvalidArgument(
            f"spec.worker_lease_seconds must be in [0, {MAX_WORKER_LEASE_SECONDS:g}] (0 = the shards' "
            f"default), got {lease}"
        )
    return replace(
        spec,
        optimizer=_normalize_optimizer(spec.optimizer),
        model_args=dict(spec.model_args),
        consistency=str(consistency),
    )
