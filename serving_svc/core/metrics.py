"""Prometheus metrics of the model server's own work (per model, never per request)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("mlmesh_serving_requests_total", "Predict requests accepted into a batch queue", ["model"])
EXAMPLES = Counter("mlmesh_serving_examples_total", "Examples accepted into a batch queue", ["model"])
REJECTED = Counter(
    "mlmesh_serving_rejected_total", "Predict requests refused because the batch queue was full", ["model"]
)
QUEUE_DEPTH = Gauge("mlmesh_serving_queue_depth", "Requests waiting for a batch", ["model"])
BATCH_SIZE = Histogram(
    "mlmesh_serving_batch_size",
    "Examples per model call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
MODEL_CALLS = Counter("mlmesh_serving_model_calls_total", "Model calls (one per batch)", ["model", "outcome"])
MODEL_CALL_SECONDS = Histogram(
    "mlmesh_serving_model_call_seconds",
    "Time inside one batched model call",
    ["model"],
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LOADED_VERSIONS = Gauge("mlmesh_serving_loaded_versions", "Versions AVAILABLE to answer requests", ["model"])
LOADS = Counter("mlmesh_serving_loads_total", "Version loads by outcome", ["model", "outcome"])
LOAD_SECONDS = Histogram(
    "mlmesh_serving_load_seconds",
    "Time to load and warm up one version",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
# -- version lifecycle (the manager) --
# LOADS outcomes: ok, failed (the loader raised), resource_exhausted (can never fit the memory budget).
UNLOADS = Counter("mlmesh_serving_unloads_total", "Versions unloaded after serving", ["model"])
VERSIONS = Gauge(
    "mlmesh_serving_versions",
    "Versions per lifecycle state (START, LOADING, AVAILABLE, UNLOADING, END)",
    ["model", "state"],
)
MEMORY_BUDGET = Gauge("mlmesh_serving_memory_budget_bytes", "Memory budget for loaded versions (0 = none)")
MEMORY_RESERVED = Gauge(
    "mlmesh_serving_memory_reserved_bytes",
    "Estimated memory reserved by LOADING, AVAILABLE and UNLOADING versions",
)

# -- batching knobs and de-duplication (helper C) --------------------------------
DEADLINE_EXPIRED = Counter(
    "mlmesh_serving_deadline_expired_total",
    "Requests answered DEADLINE_EXCEEDED without running: their deadline passed while queued",
    ["model"],
)
CANCELLED_QUEUED = Counter(
    "mlmesh_serving_cancelled_queued_total",
    "Requests whose caller went away while they were queued (they never ran); a client's deadline "
    "often arrives as such a cancel, before the replica's own copy of it passes",
    ["model"],
)
PADDED_EXAMPLES = Counter(
    "mlmesh_serving_padded_examples_total",
    "Padding rows added to reach an allowed batch size (computed, then sliced off)",
    ["model"],
)
DEDUP_HITS = Counter(
    "mlmesh_serving_dedup_hits_total",
    "De-duplicated requests by kind: coalesced (joined a running execution), replayed (a stored "
    "answer), mismatch (key reused for another request: FAILED_PRECONDITION)",
    ["method", "kind"],
)
DEDUP_CACHE_BYTES = Gauge("mlmesh_serving_dedup_cache_bytes", "Bytes held by the de-duplication replay cache")
DEDUP_CACHE_ENTRIES = Gauge("mlmesh_serving_dedup_cache_entries", "Answers held by the replay cache")
