"""Prometheus metrics of the shard's own work (gRPC call counts come from mlmesh.server).

No job label: job ids are unbounded and would grow the series without limit.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PUSHES = Counter(
    "mlmesh_ps_pushes_total",
    "Pushes by outcome: applied, buffered (SYNC: waiting for the step's other workers; exactly-once: "
    "staged until the task's lease commits), duplicate "
    "(step already applied), nonfinite_skipped (NaN/Inf, job set to skip) or rejected (bad input)",
    ["result"],
)
PULL_BYTES = Counter("mlmesh_ps_pull_bytes_total", "Bytes of parameter values returned by pulls")
PUSH_BYTES = Counter("mlmesh_ps_push_bytes_total", "Bytes of gradients received in valid pushes")
APPLY_SECONDS = Histogram(
    "mlmesh_ps_apply_seconds",
    "Time to validate and apply one push (lock held)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
VARIABLES = Gauge("mlmesh_ps_variables", "Variables held by this shard, all jobs")
BYTES_HELD = Gauge("mlmesh_ps_bytes_held", "Bytes of values and optimizer slots held by this shard")
CHECKPOINTS = Counter(
    "mlmesh_ps_checkpoints_total", "Checkpoint operations by kind and result", ["op", "result"]
)
CHECKPOINT_SECONDS = Histogram(
    "mlmesh_ps_checkpoint_seconds",
    "Time to write or read one job's checkpoint",
    ["op"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
SYNC_STEPS = Counter(
    "mlmesh_ps_sync_steps_total",
    "SYNC steps closed: applied (one aggregated update) or empty (its pushes were lost in a restart)",
    ["result"],
)
PULL_WAIT_SECONDS = Histogram(
    "mlmesh_ps_pull_wait_seconds",
    "Time a worker's pull waited for the consistency model (SYNC barrier, staleness bound)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10, 30),
)
MEMBERSHIP = Counter(
    "mlmesh_ps_membership_total", "Workers joining, leaving and expiring (lease ran out)", ["event"]
)
JOBS_DROPPED = Counter("mlmesh_ps_jobs_dropped_total", "Jobs whose state this shard freed (DropJob)")
LEASES = Counter(
    "mlmesh_ps_leases_total",
    "Exactly-once jobs: task leases settled on this shard",
    ["outcome"],  # committed (staged pushes applied) | aborted (discarded)
)
