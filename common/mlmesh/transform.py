"""User transforms for work-queue jobs: a function applied to every partition of a dataset,
producing a derived dataset (`mlmesh transform`).

A transform is named by an import path, "package.module:function", like a model. The
function takes the source dataset's schema and the job's string arguments and returns a
`TransformSpec`: the output schema and the function from one partition's columns to the
output records. It must be deterministic: a partition whose lease lapsed is transformed
again by another worker, and only one of the attempts is kept (the output is appended and
the task completed in one transaction), so any attempt must be as good as any other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from mlmesh.errors import InvalidArgument

# name -> (NumPy dtype name, per-record shape)
Schema = dict[str, tuple[str, tuple[int, ...]]]
Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class TransformSpec:
    output: Schema
    fn: Callable[[Mapping[str, np.ndarray]], Columns]

    def apply(self, columns: Mapping[str, np.ndarray], what: str) -> Columns:
        """Run the transform and check its result against `output`; InvalidArgument says how
        it disagrees (a bug in the transform, not bad data)."""
        out = self.fn(columns)
        missing = sorted(set(self.output) - set(out))
        extra = sorted(set(out) - set(self.output))
        if missing or extra:
            raise InvalidArgument(
                f"{what}: the transform returned columns {sorted(out)}, not {sorted(self.output)}"
            )
        lengths = {len(a) for a in out.values()}
        if len(lengths) > 1:
            raise InvalidArgument(f"{what}: the transform's columns have different lengths {sorted(lengths)}")
        checked: Columns = {}
        for name, (dtype, shape) in self.output.items():
            a = np.asarray(out[name])
            if a.shape[1:] != shape:
                raise InvalidArgument(
                    f"{what}: column {name!r} has records of shape {list(a.shape[1:])}, "
                    f"declared {list(shape)}"
                )
            if not np.can_cast(a.dtype, np.dtype(dtype), casting="same_kind"):
                raise InvalidArgument(f"{what}: column {name!r} is {a.dtype}, declared {dtype}")
            checked[name] = np.ascontiguousarray(a, dtype=dtype)
        return checked


def load_transform(path: str, source: Schema, args: Mapping[str, str]) -> TransformSpec:
    """Import "package.module:function" and call it with the source schema and the args."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidArgument(f"transform {path!r} is not an import path 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise InvalidArgument(f"transform {path!r} cannot be imported: {e}") from None
    spec = factory(source, **dict(args))
    if not isinstance(spec, TransformSpec):
        raise InvalidArgument(f"transform {path!r} returned {type(spec).__name__}, not a TransformSpec")
    return spec
