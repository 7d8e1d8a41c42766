"""Settings of the two roles: the coordinator and the training worker.

Flags are kebab-case (`--ingest-addr`), environment variables carry the
role's prefix (MLMESH_TRAINER_INGEST_ADDR, MLMESH_WORKER_CACHE_DIR).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mlmesh.settings import ServiceSettings
from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from trainer_svc.clients import CallPolicy


def _check_addr(addr: str) -> str:
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {addr!r} is not HOST:PORT")
    return addr.strip()


class _Client(ServiceSettings):
    rpc_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="Deadline of each unary call to a peer."
    )
    retry_seconds: float = Field(
        60.0, ge=0, le=3600, description="How long a peer answering UNAVAILABLE is retried (with backoff)."
    )

    def call_policy(self) -> CallPolicy:
        return CallPolicy(
            timeout=self.rpc_timeout_seconds,
            retry_seconds=self.retry_seconds,
            max_message_bytes=self.max_message_bytes,
        )


class CoordinatorSettings(_Client):
    model_config = SettingsConfigDict(env_prefix="MLMESH_TRAINER_")

    ingest_addr: str = Field(
        "", description="ingest_svc address, HOST:PORT; empty = the registry's 'ingest' (needs --registry)."
    )
    ps_addrs: str = Field(
        "",
        description="Parameter-server shard addresses in shard-index order, comma-separated: A0,A1; "
        "empty = the registry's 'paramserver' shards, ordered by their shard index (needs --registry).",
    )
    model_repo: Path = Field(
        ..., description="Model repository: exports go to <repo>/<model_name>/<version>/."
    )
    work_dir: Path = Field(..., description="Directory of the coordinator's durable job records.")
    monitor_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the running job's queue is polled and pending jobs started."
    )
    eval_batch_size: int = Field(512, ge=1, le=65536, description="Batch size of the final evaluation.")
    worker_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A worker silent this long no longer counts as active on its job."
    )
    checkpoint_seconds: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="How often the shards are asked to checkpoint a running job (SYNC jobs checkpoint "
        "at aligned steps on their own) and the manifest <work_dir>/manifests/<job>.json is "
        "rewritten; 0 = never.",
    )

    min_partition_bytes: int = Field(
        256 * 1024,
        ge=0,
        le=2**40,
        description="Dense variables of at least this many bytes (with a row per shard) are "
        "partitioned by rows across all shards, like tf.distribute's MinSizePartitioner; the rest "
        "live whole on one shard. Decided when a job is first registered; 0 partitions every "
        "variable with a row per shard.",
    )

    @field_validator("ingest_addr")
    @classmethod
    def _ingest(cls, v: str) -> str:
        return _check_addr(v) if v.strip() else ""

    @field_validator("ps_addrs")
    @classmethod
    def _shards(cls, v: str) -> str:
        addrs = [a for a in v.split(",") if a.strip()]
        if not addrs and v.strip():
            raise ValueError("at least one shard address is needed")
        return ",".join(_check_addr(a) for a in addrs)

    @model_validator(mode="after")
    def _peers_known(self) -> CoordinatorSettings:
        missing = [f for f in ("ingest_addr", "ps_addrs") if not getattr(self, f)]
        if missing and not self.registry:
            raise ValueError(
                f"{' and '.join(missing)} must be set (--ingest-addr HOST:PORT, --ps-addrs A0,A1), "
                "or --registry given to find them by name"
            )
        return self

    @property
    def ps_addr_list(self) -> list[str]:
        return [a for a in self.ps_addrs.split(",") if a]


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(_Client):
    model_config = SettingsConfigDict(env_prefix="MLMESH_WORKER_")

    coordinator_addr: str = Field(
        "",
        description="Coordinator (TrainerService) address, HOST:PORT; empty = the registry's 'trainer' "
        "(needs --registry). With --registry, ingest and the shards are also followed there.",
    )
    worker_id: str = Field(
        default_factory=_default_worker_id,
        min_length=1,
        max_length=256,
        description="Identity toward the coordinator and the shards; default <hostname>-<pid>.",
    )
    cache_dir: Path = Field(..., description="Local cache of partitions read, reused by later epochs.")
    cache_max_bytes: int = Field(
        2 * 1024**3,
        ge=0,
        description="Bound of the partition cache in bytes, for the whole --cache-dir (workers sharing "
        "it share the bound); least recently used partitions are evicted; 0 disables the cache.",
    )
    poll_seconds: float = Field(1.0, gt=0, le=60, description="Wait between polls when there is no work.")
    lease_seconds: float = Field(
        60.0, ge=1, le=3600, description="Task lease asked of ingest; extended at half-time while training."
    )
    report_every_seconds: float = Field(2.0, gt=0, le=600, description="Interval of progress reports.")
    prefetch: bool = Field(
        True, description="Overlap the pull of the next step and the push of this one with compute."
    )
    read_ahead: int = Field(
        1, ge=0, le=16, description="Partitions leased and read ahead while one trains (0: none)."
    )
    tf_threads: int = Field(
        0, ge=0, le=256, description="TensorFlow intra/inter-op threads; 0 keeps TensorFlow's default."
    )

    @field_validator("coordinator_addr")
    @classmethod
    def _coord(cls, v: str) -> str:
        return _check_addr(v) if v.strip() else ""

    @model_validator(mode="after")
    def _coordinator_known(self) -> WorkerSettings:
        if not self.coordinator_addr and not self.registry:
            raise ValueError(
                "coordinator_addr must be set (--coordinator-addr HOST:PORT), "
                "or --registry given to find it by name"
            )
        return self
