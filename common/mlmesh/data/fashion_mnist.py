"""Fashion-MNIST (Zalando, MIT licence) as NumPy arrays, offline first.

Where the files come from, in order:

1. `data_dir` when given, else the directory in the `MLMESH_DATA` environment
   variable (read at call time) — when either is named it must hold the files;
2. /usr/share/datasets/fashion-mnist/ (Debian package `dataset-fashion-mnist`);
3. Keras's downloader (`keras.datasets.fashion_mnist.load_data`), only when
   neither directory has the files, with Keras imported lazily;
4. otherwise DataUnavailable, naming both ways to provide the data.

Files: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

import numpy as np

from mlmesh.data.idx import IdxFormatError, read_idx_images, read_idx_labels

ENV_VAR = "MLMESH_DATA"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SIZES = {"train": 60_000, "test": 10_000}
_PREFIX = {"train": "train", "test": "t10k"}

Split = Literal["train", "test"]


class DataUnavailable(RuntimeError):
    """The data set cannot be found or fetched; the message says how to provide it."""


def _find(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _files(directory: Path, split: Split) -> tuple[Path, Path] | None:
    images = _find(directory, f"{_PREFIX[split]}-images-idx3-ubyte")
    labels = _find(directory, f"{_PREFIX[split]}-labels-idx1-ubyte")
    return (images, labels) if images and labels else None


@functools.lru_cache(maxsize=4)
def _read_dir(directory: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    files = _files(directory, split)
    assert files is not None
    images = read_idx_images(files[0])
    labels = read_idx_labels(files[1])
    if len(images) != len(labels):
        raise IdxFormatError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise IdxFormatError(f"{files[1]}: label {int(labels.max())} is outside 0..{len(CLASS_NAMES) - 1}")
    labels.setflags(write=False)  # shared through the cache
    return images, labels


def _how_to(reason: str) -> str:
    return (
        f"Fashion-MNIST is not available: {reason}. Provide it either way:\n"
        f"  - apt-get install dataset-fashion-mnist   (installs it in {DEFAULT_DIR}/), or\n"
        f"  - set {ENV_VAR}=<dir> holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
    )


def _download(split: Split) -> tuple[np.ndarray, np.ndarray]:
    try:
        import keras  # lazy: pulls in TensorFlow

        train, test = keras.datasets.fashion_mnist.load_data()
    except Exception as e:
        raise DataUnavailable(
            _how_to(f"no files in {DEFAULT_DIR} and the Keras download failed ({type(e).__name__}: {e})")
        ) from e
    images, labels = train if split == "train" else test
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def resolve_dir(data_dir: str | Path | None = None) -> Path | None:
    """The directory the files will come from, or None if only a download remains.

    Raises DataUnavailable when an explicitly named directory lacks the files.
    """
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        directory = Path(explicit)
        if _files(directory, "train") is None and _files(directory, "test") is None:
            source = "data_dir" if data_dir is not None else ENV_VAR
            raise DataUnavailable(_how_to(f"{source}={directory} holds no Fashion-MNIST idx files"))
        return directory
    if _files(DEFAULT_DIR, "train") or _files(DEFAULT_DIR, "test"):
        return DEFAULT_DIR
    return None


def load_fashion_mnist(
    split: Split = "train",
    limit: int | None = None,
    *,
    data_dir: str | Path | None = None,
    allow_download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, 28, 28] (raw 0..255) and labels int64 [n], in file order.

    `limit` keeps the first `limit` records. The arrays are read-only (cached
    per process; copy before mutating). Thread-safe.
    """
    if split not in SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    directory = resolve_dir(data_dir)
    if directory is not None:
        if _files(directory, split) is None:
            raise DataUnavailable(_how_to(f"{directory} has no {split} files ({_PREFIX[split]}-*-ubyte.gz)"))
        images, labels = _read_dir(directory.resolve(), split)
    elif allow_download:
        images, labels = _download(split)
    else:
        raise DataUnavailable(_how_to(f"no files in {DEFAULT_DIR} and downloading is disabled"))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels
