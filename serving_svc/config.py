"""Settings of a serving replica (flags `--model-repo ...`, env `MLMESH_SERVING_...`)."""

from __future__ import annotations

from pathlib import Path

from mlmesh.settings import ServiceSettings
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict


def parse_model_names(value: str) -> list[str]:
    """Split "a,b" into names; blanks are dropped."""
    return [name.strip() for name in value.split(",") if name.strip()]


class ServingSettings(ServiceSettings):
    """What one model server needs on top of the common server settings."""

    model_config = SettingsConfigDict(
        env_prefix="MLMESH_SERVING_", extra="forbid", validate_default=True, protected_namespaces=()
    )

    model_repo: Path = Field(
        description="Model repository: <repo>/<model>/<version>/saved_model.pb (TF Serving layout). "
        "It may not exist yet: models appear when training exports them."
    )
    model_names: str = Field(
        "",
        description="Comma-separated models to serve; empty serves every model directory in the repository.",
    )
    poll_seconds: float = Field(1.0, gt=0, le=3600, description="How often the repository is scanned.")
    max_batch_size: int = Field(
        32, ge=1, le=65536, description="Most examples answered by one model call (dynamic batching)."
    )
    max_batch_wait_ms: float = Field(
        2.0, ge=0, le=10_000, description="Longest a request waits for others to join its batch."
    )
    max_queue: int = Field(
        1024, ge=1, le=1_000_000, description="Requests waiting per model; more get RESOURCE_EXHAUSTED."
    )
    max_request_examples: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Most examples in one Predict request; a request above max_batch_size "
        "runs as its own batch.",
    )
    warmup: bool = Field(True, description="Call each newly loaded version once with a zero batch first.")
    model_threads: int = Field(2, ge=1, le=64, description="Threads that run model calls (one batch each).")

    @field_validator("model_names")
    @classmethod
    def _valid_names(cls, value: str) -> str:
        names = parse_model_names(value)
        for name in names:
            if name.startswith(".") or "/" in name or "\\" in name:
                raise ValueError(f"model name {name!r} must be a plain directory name (no '/', not hidden)")
        if len(set(names)) != len(names):
            raise ValueError(f"model names {names} contain duplicates")
        return value

    @property
    def model_name_list(self) -> list[str]:
        return parse_model_names(self.model_names)
