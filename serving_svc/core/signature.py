"""What a servable's signature accepts, without TensorFlow (requests are checked against it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mlmesh import tensor
from mlmesh.errors import InvalidArgument


def is_supported(dtype: np.dtype) -> bool:
    """Whether the tensor codec (mlmesh.types.v1.Tensor) carries this dtype."""
    try:
        tensor.dtype_code(dtype)
    except InvalidArgument:
        return False
    return True


def format_shape(shape: Sequence[int | None]) -> str:
    """'[?,28,28]': None dimensions accept any size."""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class InputSpec:
    """One signature input. `shape` is None when the rank is unknown; a None
    dimension accepts any size. shape[0] is the batch dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    def describe_shape(self) -> str:
        return "any shape" if self.shape is None else format_shape(self.shape)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the signature insists on, if its first dimension is fixed."""
        return None if self.shape is None else self.shape[0]
