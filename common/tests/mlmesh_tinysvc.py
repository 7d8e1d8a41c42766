"""A tiny real service for the supervisor and server tests: only grpc.health.v1.

    python -m mlmesh_tinysvc --name a --stop-log FILE [--start-delay S]
        [--fail-at-start true] [--fail-if-exists FILE]

It appends "<name> <pid>" to --stop-log when it has stopped, so tests can see
the order in which a supervisor stopped several of them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from mlmesh.server import run_service
from mlmesh.settings import ServiceSettings, load_settings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class TinySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MLMESH_TINY_", extra="forbid")

    name: str = Field("tiny", description="Name written to the stop log.")
    stop_log: Path | None = Field(None, description="File to append '<name> <pid>' to on stop.")
    start_delay: float = Field(0.0, ge=0, le=60, description="Seconds on_start sleeps before SERVING.")
    fail_at_start: bool = Field(False, description="Exit with code 3 before serving.")
    fail_if_exists: Path | None = Field(
        None, description="Exit with code 3 before serving if this file exists."
    )


def main() -> None:
    settings = load_settings(TinySettings)
    if settings.fail_at_start or (settings.fail_if_exists is not None and settings.fail_if_exists.exists()):
        print("tiny: failing at start as asked", file=sys.stderr)
        raise SystemExit(3)

    async def on_start() -> None:
        await asyncio.sleep(settings.start_delay)

    async def on_stop() -> None:
        if settings.stop_log is not None:
            with open(settings.stop_log, "a") as f:
                f.write(f"{settings.name} {os.getpid()}\n")

    asyncio.run(
        run_service(
            settings, name=settings.name, add_servicers=lambda server: [], on_start=on_start, on_stop=on_stop
        )
    )


if __name__ == "__main__":
    main()
