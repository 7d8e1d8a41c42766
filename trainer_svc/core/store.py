"""Durable job records: one JSON file per job under `<work_dir>/jobs/`.

Writes are atomic (temp file, fsync, rename, fsync of the directory), so a
crash leaves either the old or the new record, never a torn one. Not
thread-safe: the coordinator writes from its one event loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlmesh.files import atomic_write_bytes
from mlmesh.logging import get_logger

from trainer_svc.core.jobs import Job

log = get_logger(__name__)


class JobStore:
    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def manifest_path(self, job_id: str) -> Path:
        return self.dir.parent / "manifests" / f"{job_id}.json"

    def save_manifest(self, job_id: str, manifest: dict[str, Any]) -> None:
        """The job's checkpoint manifest (trainer_svc.core.manifest), atomically."""
        path = self.manifest_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def save(self, job: Job) -> None:
        atomic_write_bytes(
            self.path(job.job_id), json.dumps(job.to_dict(), indent=1, sort_keys=True).encode()
        )

    def load_all(self) -> list[Job]:
        """Every readable record, oldest first; unreadable files are logged and skipped."""
        jobs = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                jobs.append(Job.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("job record unreadable; skipped", path=str(path), error=str(e))
        jobs.sort(key=lambda j: (j.created_unix, j.job_id))
        return jobs
