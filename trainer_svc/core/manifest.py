"""The coordinator's record of a job's checkpoints across all shards.

A manifest names, per shard, the checkpoint to restore the job from. For a
SYNC job the shards checkpoint at the same steps, so the newest step every
shard holds is a consistent cut: restoring those files gives the parameters
exactly as they were after that step ("consistent": true). ASYNC and BOUNDED
jobs have no global step; their manifest lists each shard's newest
checkpoint, with its version, and says so ("consistent": false).

Pure: built from what the shards report (GetShardInfo).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from mlmesh.errors import FailedPrecondition

from trainer_svc.core.types import ShardCheckpoint, ShardInfo


def build_manifest(job_id: str, infos: Sequence[ShardInfo]) -> dict[str, Any]:
    """The manifest of `job_id` from every shard's report (in shard order).

    FailedPrecondition when a shard does not hold the job or has no checkpoint of it.
    """
    jobs = []
    for shard, info in enumerate(infos):
        job = info.jobs.get(job_id)
        if job is None or not job.checkpoints:
            raise FailedPrecondition(f"shard {shard} has no checkpoint of job {job_id!r}")
        jobs.append(job)
    mode = jobs[0].consistency
    chosen: list[ShardCheckpoint] = [job.checkpoints[0] for job in jobs]
    step = None
    if mode == "sync":
        common = set.intersection(*({c.clock for c in job.checkpoints} for job in jobs))
        if common:
            step = max(common)
            chosen = [next(c for c in job.checkpoints if c.clock == step) for job in jobs]
    return {
        "job_id": job_id,
        "consistency": mode,
        "consistent": step is not None,
        "step": step,
        "written_unix": time.time(),
        "shards": [
            {"shard": i, "path": c.path, "version": c.version, "clock": c.clock} for i, c in enumerate(chosen)
        ],
    }
