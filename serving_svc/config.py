"""Settings of a serving replica (flags `--model-repo ...`, env `MLMESH_SERVING_...`).

Which models to serve comes from exactly one of `--model-repo` (every model
directory, or `--model-names`, with policy latest{1}) or `--model-config-file`
(TF Serving's text-format ModelServerConfig: several models, each with its
own base_path, version policy and labels).
"""

from __future__ import annotations

from pathlib import Path

from mlmesh.errors import InvalidArgument
from mlmesh.settings import ServiceSettings
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from serving_svc.core.batch_options import BatchingOptions, check_allowed_batch_sizes, parse_sizes
from serving_svc.core.model_config import ModelConfigError, read_model_config
from serving_svc.core.resources import DEFAULT_ESTIMATE_FACTOR


def parse_model_names(value: str) -> list[str]:
    """Split "a,b" into names; blanks are dropped."""
    return [name.strip() for name in value.split(",") if name.strip()]


class ServingSettings(ServiceSettings):
    """What one model server needs on top of the common server settings."""

    model_config = SettingsConfigDict(
        env_prefix="MLMESH_SERVING_", extra="forbid", validate_default=True, protected_namespaces=()
    )

    model_repo: Path | None = Field(
        None,
        description="Model repository: <repo>/<model>/<version>/saved_model.pb (TF Serving layout). "
        "It may not exist yet: models appear when training exports them. "
        "Give this or --model-config-file.",
    )
    model_config_file: Path | None = Field(
        None,
        description="TF Serving model config (text-format tensorflow.serving.ModelServerConfig with "
        "model_config_list): name, base_path (relative to the file), model_platform 'tensorflow', "
        "model_version_policy, version_labels. Give this or --model-repo.",
    )
    model_config_poll_seconds: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="How often the model config file is checked for changes (0: read once). "
        "A bad change is logged and the last good config keeps serving.",
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
    load_threads: int = Field(
        1, ge=1, le=64, description="Threads that load versions (in the background, apart from model calls)."
    )
    stagger_loads_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Replicas sharing the repository load a new version of a model one at a time "
        "(flock on the model directory), so the others serve at full speed meanwhile; the longest a "
        "load waits for its turn. 0: load at once.",
    )
    load_niceness: int = Field(
        19,
        ge=0,
        le=19,
        description="Nice value of the threads that load versions (0: as the server). A load yields "
        "the CPU to request handling: p99 during a reload 1.2x steady instead of 1.9-2.5x (BENCHMARKS.md).",
    )
    memory_budget_bytes: int = Field(
        0,
        ge=0,
        description="Memory the loaded versions may take, by estimate (0: no limit). A load that does not "
        "fit waits for an unload; one larger than the budget ends with RESOURCE_EXHAUSTED.",
    )
    memory_estimate_factor: float = Field(
        DEFAULT_ESTIMATE_FACTOR,
        gt=0,
        le=1000,
        description="A version's memory estimate is the size of its files on disk times this "
        "(TF Serving uses 1.2).",
    )

    # -- batching knobs (TF Serving's names) and de-duplication ------------------------
    # max_batch_wait_ms and max_queue above still work: batch_timeout_micros, when set, wins
    # over max_batch_wait_ms; max_queue (requests) and max_enqueued_batches both bound the queue.
    batch_timeout_micros: int | None = Field(
        None,
        ge=0,
        le=10_000_000,
        description="Longest a request waits for others to join its batch, in µs; unset = max_batch_wait_ms.",
    )
    max_enqueued_batches: int = Field(
        64,
        ge=1,
        le=1_000_000,
        description="Batches that may wait per model; a request beyond that gets RESOURCE_EXHAUSTED (429).",
    )
    num_batch_threads: int | None = Field(
        None, ge=1, le=64, description="Batches of one model in flight at once; unset = model_threads."
    )
    allowed_batch_sizes: str = Field(
        "",
        description="Comma-separated increasing batch sizes; a batch is padded up to the next one. "
        "The last must equal max_batch_size. Empty: no padding.",
    )
    dedup_ttl_seconds: float = Field(
        60.0, ge=0, le=86_400, description="How long a completed answer is replayed for its idempotency key."
    )
    dedup_cache_bytes: int = Field(
        64 * 1024 * 1024, ge=0, le=1 << 40, description="Bytes of answers kept for replay (oldest evicted)."
    )
    dedup_content_hash: bool = Field(
        False, description="De-duplicate requests without an idempotency key by a digest of their content."
    )

    @field_validator("allowed_batch_sizes")
    @classmethod
    def _valid_allowed_sizes(cls, value: str, info: ValidationInfo) -> str:
        try:
            check_allowed_batch_sizes(parse_sizes(value), info.data.get("max_batch_size", 0))
        except InvalidArgument as e:
            raise ValueError(e.message) from None
        return value

    @property
    def batching_options(self) -> BatchingOptions:
        timeout_us = self.batch_timeout_micros
        return BatchingOptions(
            max_batch_size=self.max_batch_size,
            batch_timeout_micros=round(self.max_batch_wait_ms * 1000) if timeout_us is None else timeout_us,
            max_enqueued_batches=self.max_enqueued_batches,
            num_batch_threads=self.num_batch_threads or self.model_threads,
            allowed_batch_sizes=tuple(parse_sizes(self.allowed_batch_sizes)),
            max_queue=self.max_queue,
        )

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

    @model_validator(mode="after")
    def _one_model_source(self) -> ServingSettings:
        if (self.model_repo is None) == (self.model_config_file is None):
            raise ValueError(
                "give exactly one of --model-repo (MLMESH_SERVING_MODEL_REPO) or --model-config-file "
                "(MLMESH_SERVING_MODEL_CONFIG_FILE)"
            )
        if self.model_config_file is not None and self.model_names:
            raise ValueError("--model-names applies to --model-repo; the model config file lists the models")
        return self

    @field_validator("model_config_file")
    @classmethod
    def _readable_config(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                read_model_config(value)
            except ModelConfigError as e:
                raise ValueError(str(e)) from None
        return value

    @property
    def model_name_list(self) -> list[str]:
        return parse_model_names(self.model_names)
