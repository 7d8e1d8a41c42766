"""Settings of ingest_svc: flags (`--data-dir`) or env (`MLMESH_INGEST_DATA_DIR`)."""

from __future__ import annotations

from pathlib import Path

from mlmesh.settings import ServiceSettings
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

MIB = 1024 * 1024


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MLMESH_INGEST_", extra="forbid", validate_default=True)

    data_dir: Path = Field(
        Path(".mlmesh/ingest"),
        description="Where the metadata store (meta.sqlite) and partition files live; created if missing.",
    )
    default_max_partition_bytes: int = Field(
        8 * MIB,
        ge=4 * 1024,
        le=1024 * MIB,
        description="Partition size bound for datasets created without one (sum of record bytes).",
    )
    default_lease_seconds: float = Field(
        30.0, gt=0, le=24 * 3600, description="Lease length when LeaseTask/ExtendLease ask for 0."
    )
    max_lease_seconds: float = Field(
        3600.0, gt=0, le=7 * 24 * 3600, description="Longest lease a client may ask for."
    )
    lease_sweep_seconds: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="Period of the background expiry of overdue leases (0 disables); "
        "expiry is also checked on every queue call.",
    )

    @model_validator(mode="after")
    def _lease_bounds(self) -> IngestSettings:
        if self.default_lease_seconds > self.max_lease_seconds:
            raise ValueError(
                f"default_lease_seconds ({self.default_lease_seconds}) exceeds "
                f"max_lease_seconds ({self.max_lease_seconds})"
            )
        return self
