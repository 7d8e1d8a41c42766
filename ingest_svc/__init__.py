"""ingest_svc: datasets cut into immutable partitions, and the work queue of training tasks.

Run with `python -m ingest_svc --data-dir D`. The gRPC contract is
`mlmesh.ingest.v1.IngestService` (protos/mlmesh/ingest/v1/ingest.proto).
"""
