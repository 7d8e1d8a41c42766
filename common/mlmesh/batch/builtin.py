"""Transforms that ship with mlmesh (see `mlmesh.transform` for writing your own)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from mlmesh.errors import InvalidArgument
from mlmesh.transform import Schema, TransformSpec


def affine(source: Schema, columns: str = "", scale: str = "1", shift: str = "0", every: str = "1",
           delay_seconds: str = "0") -> TransformSpec:  # fmt: skip
    """`scale * x + shift` on the named float columns (comma-separated; default every float
    column), keeping every `every`-th record; other columns are copied. `delay_seconds` per
    partition simulates expensive work (demos and fault tests)."""
    names = [c for c in columns.split(",") if c] or [
        n for n, (d, _) in source.items() if d.startswith("float")
    ]
    for n in names:
        if n not in source:
            raise InvalidArgument(f"affine: column {n!r} is not in the source (it has {sorted(source)})")
        if not source[n][0].startswith("float"):
            raise InvalidArgument(f"affine: column {n!r} is {source[n][0]}, not a float")
    a, b, k, delay = float(scale), float(shift), int(every), float(delay_seconds)
    if k < 1:
        raise InvalidArgument(f"affine: every must be >= 1, got {k}")

    def fn(cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if delay:
            time.sleep(delay)
        out = {n: np.asarray(c)[::k] for n, c in cols.items()}
        for n in names:
            out[n] = (out[n] * a + b).astype(out[n].dtype)
        return out

    return TransformSpec(dict(source), fn)
