"""Prometheus metrics of ingest's own work (RPC counts and latency come from mlmesh.server)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECORDS_APPENDED = Counter("mlmesh_ingest_records_appended_total", "Records committed by Append streams")
BYTES_APPENDED = Counter("mlmesh_ingest_bytes_appended_total", "Record bytes committed by Append streams")
PARTITIONS_WRITTEN = Counter("mlmesh_ingest_partitions_written_total", "Partitions committed")
APPEND_FAILURES = Counter(
    "mlmesh_ingest_append_failures_total",
    "Append streams that ended without committing (their files were deleted)",
    ["reason"],  # rejected (bad input) | cancelled (by the client) | error
)
PARTITIONS_READ = Counter("mlmesh_ingest_partitions_read_total", "Partitions streamed by ReadPartition")
BYTES_READ = Counter("mlmesh_ingest_bytes_read_total", "Record bytes streamed by ReadPartition")
TASKS_ENQUEUED = Counter("mlmesh_ingest_tasks_enqueued_total", "Tasks created by EnqueueEpoch")
TASKS_LEASED = Counter("mlmesh_ingest_tasks_leased_total", "Leases granted")
TASKS_COMPLETED = Counter("mlmesh_ingest_tasks_completed_total", "Tasks completed")
LEASES_EXPIRED = Counter("mlmesh_ingest_leases_expired_total", "Leases that expired (task back to pending)")
QUEUE_PENDING = Gauge("mlmesh_ingest_queue_pending_tasks", "Tasks pending across all jobs (queue depth)")
QUEUE_LEASED = Gauge("mlmesh_ingest_queue_leased_tasks", "Tasks under lease across all jobs")
CORRUPT_READS = Counter(
    "mlmesh_ingest_corrupt_reads_total",
    "ReadPartition calls refused with DATA_LOSS (a partition file damaged or missing on disk)",
)
