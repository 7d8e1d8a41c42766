"""Transforms shipped with mlmesh, importable by a work-queue job's `transform` path.

Each module exposes a factory `(source_schema, **args: str) -> mlmesh.transform.TransformSpec`
(see `mlmesh.transform`). They use NumPy only.
"""
