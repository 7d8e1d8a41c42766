"""Prometheus metrics of trainer_svc (coordinator and workers), module-level."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# Coordinator
JOBS = Gauge("mlmesh_trainer_jobs", "Jobs known to the coordinator, by state", ["state"])
JOB_TRANSITIONS = Counter(
    "mlmesh_trainer_job_transitions_total", "Job state changes, by new state", ["state"]
)
EVAL_SECONDS = Histogram("mlmesh_trainer_eval_seconds", "Time to evaluate a finished job")
EXPORT_SECONDS = Histogram("mlmesh_trainer_export_seconds", "Time to export a finished job's SavedModel")

# Worker
STEPS = Counter("mlmesh_trainer_worker_steps_total", "Training steps (one pushed mini-batch each)")
EXAMPLES = Counter("mlmesh_trainer_worker_examples_total", "Training examples consumed")
STEP_PHASE = Histogram(
    "mlmesh_trainer_worker_step_phase_seconds",
    "Time per training step spent waiting on each phase (pull is 0 when prefetched in time)",
    ["phase"],
    buckets=_STEP_BUCKETS,
)
LOSS = Gauge("mlmesh_trainer_worker_loss", "Loss of the last training step")
TASKS = Counter("mlmesh_trainer_worker_tasks_total", "Partitions processed, by outcome", ["outcome"])
PARTITION_READS = Counter(
    "mlmesh_trainer_worker_partition_reads_total",
    "Partitions loaded, by source (cache or ingest)",
    ["source"],
)
# Partition cache: the bytes are the whole directory's, which the host's workers share.
CACHE_HITS = Counter("mlmesh_trainer_worker_cache_hits_total", "Partition cache lookups that were served")
CACHE_MISSES = Counter(
    "mlmesh_trainer_worker_cache_misses_total",
    "Partition cache lookups not served: absent, corrupt or stale (read again from ingest)",
)
CACHE_EVICTIONS = Counter(
    "mlmesh_trainer_worker_cache_evictions_total", "Cached partitions removed to stay within the bound"
)
CACHE_CORRUPT = Counter(
    "mlmesh_trainer_worker_cache_corrupt_total",
    "Cached partitions found corrupt on read and removed, by reason (checksum, truncated, format)",
    ["reason"],
)
CACHE_BYTES = Gauge(
    "mlmesh_trainer_worker_cache_bytes", "Bytes of cached partitions in the cache directory, as last scanned"
)
PUSHES_IGNORED = Counter(
    "mlmesh_trainer_worker_pushes_ignored_total",
    "Pushes a shard acknowledged without applying (duplicate step)",
)
RESYNCS = Counter(
    "mlmesh_trainer_worker_resyncs_total",
    "Times a worker re-joined the barrier: behind (a SYNC step moved on without it) or refused "
    "(a push outside the consistency model; the batch was dropped)",
    ["reason"],
)
SKIPPED_BATCHES = Counter(
    "mlmesh_trainer_worker_skipped_batches_total", "Batches dropped because computing them failed", ["reason"]
)
