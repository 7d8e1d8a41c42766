"""Settings of one parameter-server shard (flags `--shard-index`, env `MLMESH_PS_SHARD_INDEX`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlmesh.settings import ServiceSettings
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict


class ParamServerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MLMESH_PS_")

    # num_shards comes first so shard_index can be checked against it.
    num_shards: int = Field(ge=1, le=4096, description="How many shards the parameter server has.")
    shard_index: int = Field(ge=0, description="This shard's index, 0..num_shards-1.")
    checkpoint_dir: Path = Field(
        None,  # type: ignore[assignment]  # replaced by the validator below
        description="Job checkpoints are written here and loaded from here on start; "
        'default ".mlmesh/ps/shard-<index>".',
    )
    checkpoint_every_seconds: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="Checkpoint changed jobs this often; 0 turns periodic checkpoints off.",
    )
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        le=100_000_000,
        description="Also checkpoint a job once it has applied this many updates since its last "
        "checkpoint; 0 turns step-based checkpoints off.",
    )
    checkpoint_keep: int = Field(
        2,
        ge=1,
        le=100,
        description="Checkpoints kept per job; older ones are deleted. Keep 2 or more so a damaged "
        "newest checkpoint still leaves one to resume from.",
    )
    max_stream_bytes: int = Field(
        1 << 30,
        ge=1024,
        le=1 << 40,
        description="Largest total of tensor bytes one PushStream may carry (chunked big tensors); "
        "more is RESOURCE_EXHAUSTED.",
    )
    max_staged_bytes: int = Field(
        1 << 30,
        ge=0,
        le=1 << 40,
        description="Exactly-once jobs: bytes of pushes one job may hold staged for uncommitted task "
        "leases; more is RESOURCE_EXHAUSTED.",
    )
    worker_threads: int = Field(
        4, ge=1, le=64, description="Threads that run NumPy work (pull copies, updates, checkpoints)."
    )

    @field_validator("shard_index")
    @classmethod
    def _index_below_count(cls, v: int, info: ValidationInfo) -> int:
        n = info.data.get("num_shards")
        if n is not None and v >= n:
            raise ValueError(f"shard_index {v} must be below num_shards {n} (shards are numbered 0..{n - 1})")
        return v

    @field_validator("checkpoint_dir", mode="before")
    @classmethod
    def _default_dir(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None or v == "":
            return Path(f".mlmesh/ps/shard-{info.data.get('shard_index', 0)}")
        return v
