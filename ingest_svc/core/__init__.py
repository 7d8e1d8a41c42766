"""Ingest's domain logic: datasets, partition files, the task queue. No grpc here."""
