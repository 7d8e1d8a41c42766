"""Models shipped with mlmesh, importable by a job's `model` path.

Each module exposes `build(**args: str) -> mlmesh.model.ModelSpec`. These are
the only modules under `mlmesh` that import TensorFlow (Keras), and only when
`build` is called.
"""
