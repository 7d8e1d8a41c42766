"""What a servable's signatures accept and return, without TensorFlow (requests are checked against it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from mlmesh import tensor
from mlmesh.errors import InvalidArgument

DEFAULT_SIGNATURE = "serving_default"
# TF Serving's method names (tensorflow/cc/saved_model/signature_constants.h).
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# Classify/regress signatures take serialized tf.Examples under this input key.
EXAMPLES_INPUT = "inputs"
CLASSES_OUTPUT = "classes"
SCORES_OUTPUT = "scores"
REGRESS_OUTPUT = "outputs"

# tf.string tensors travel as NumPy object arrays of bytes.
STRING = np.dtype(object)


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


def dtype_label(dtype: np.dtype) -> str:
    return "string" if dtype == STRING else dtype.name


@dataclass(frozen=True)
class InputSpec:
    """One signature input (or output). `shape` is None when the rank is
    unknown; a None dimension accepts any size. shape[0] is the batch dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    def describe_shape(self) -> str:
        return "any shape" if self.shape is None else format_shape(self.shape)

    def describe(self) -> str:
        """'float32[?,28,28]': the spec as error messages name it."""
        return f"{dtype_label(self.dtype)}{'[*]' if self.shape is None else format_shape(self.shape)}"

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the signature insists on, if its first dimension is fixed."""
        return None if not self.shape else self.shape[0]


@dataclass(frozen=True)
class SignatureSpec:
    """One SignatureDef: its key, TF Serving method and tensors (sorted by name)."""

    name: str
    method: str
    inputs: Mapping[str, InputSpec]
    outputs: Mapping[str, InputSpec] = field(default_factory=dict)

    @property
    def output_names(self) -> list[str]:
        return sorted(self.outputs)

    @property
    def max_batch(self) -> int | None:
        """A fixed first dimension in the signature caps (and fixes) the batch."""
        fixed = [spec.fixed_batch for spec in self.inputs.values() if spec.fixed_batch is not None]
        return min(fixed) if fixed else None


def pick_signature(signatures: Mapping[str, SignatureSpec], name: str, model: str) -> SignatureSpec:
    """The signature called `name` ("" means serving_default).

    An unknown key is the client's mistake, so InvalidArgument (HTTP 400), in
    TF Serving's words plus the keys there are."""
    key = name or DEFAULT_SIGNATURE
    try:
        return signatures[key]
    except KeyError:
        raise InvalidArgument(
            f'Serving signature key "{key}" not found: model {model!r} has signatures {sorted(signatures)}'
        ) from None
