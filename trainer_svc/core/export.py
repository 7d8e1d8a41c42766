"""Exporting a trained model to the model repository (TF Serving layout).

`<repo>/<model_name>/<version>/` holds a SavedModel whose "serving_default"
signature takes the features by name (the model's dtype, shape
[None, *feature_shape]) and returns a dict keyed by output layer name. The
export is written under `<repo>/<model_name>/.tmp-<uuid>`, synced, and
renamed into place, so a server polling the repository never sees a partial
version.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import tensorflow as tf
from mlmesh.files import fsync_dir
from mlmesh.model import ModelSpec

from trainer_svc.core import tfmodel

SIGNATURE = "serving_default"
# Bound on rename races with another writer of the same model name.
MAX_VERSION_ATTEMPTS = 100


def existing_versions(model_dir: Path) -> list[int]:
    """Numeric version directories, ascending; anything else is ignored."""
    if not model_dir.is_dir():
        return []
    out = []
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0:
            out.append(int(entry.name))
    return sorted(out)


def next_version(model_dir: Path) -> int:
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def serving_function(ms: ModelSpec, specs: Mapping[str, tfmodel.InputSpec]) -> tf.types.experimental.Function:
    """A tf.function taking the features by name and returning outputs by name."""
    features = list(ms.features)
    signature = [
        tf.TensorSpec([None, *specs[f].shape], tf.as_dtype(specs[f].dtype), name=f) for f in features
    ]
    model = ms.model

    def serve(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = tensors[0] if len(tensors) == 1 else dict(zip(features, tensors, strict=True))
        return tfmodel.output_dict(model, model(inputs, training=False))

    return tf.function(serve, input_signature=signature)


def export_saved_model(
    ms: ModelSpec, specs: Mapping[str, tfmodel.InputSpec], repo: Path, model_name: str
) -> tuple[Path, int]:
    """Write the model as the next version of `model_name`; returns (path, version).

    Not safe against a concurrent writer of the same model name beyond a
    bounded number of rename retries; the coordinator is the only writer.
    """
    model_dir = repo / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        module = tf.Module()
        module.model = ms.model  # tracks the variables
        fn = serving_function(ms, specs)
        module.serve = fn
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: fn.get_concrete_function()})
        _fsync_tree(tmp)
        for _ in range(MAX_VERSION_ATTEMPTS):
            version = next_version(model_dir)
            final = model_dir / str(version)
            try:
                os.rename(tmp, final)  # fails if `final` appeared meanwhile with content
            except OSError:
                continue
            fsync_dir(model_dir)
            return final, version
        raise RuntimeError(f"could not claim a version directory under {model_dir}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
