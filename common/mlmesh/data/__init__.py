"""Datasets that load offline, as NumPy arrays ready for `mlmesh ingest`.

TensorFlow and Keras are imported only when a download is the last resort.
"""

from mlmesh.data.fashion_mnist import (
    CLASS_NAMES,
    DEFAULT_DIR,
    ENV_VAR,
    DataUnavailable,
    load_fashion_mnist,
)
from mlmesh.data.idx import IdxFormatError, read_idx, read_idx_images, read_idx_labels

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_DIR",
    "ENV_VAR",
    "DataUnavailable",
    "IdxFormatError",
    "load_fashion_mnist",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
]
