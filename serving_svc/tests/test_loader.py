"""The loader turns a SavedModel into a servable that runs its serving_default graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving_svc.core.loader import LoadError, load_servable
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import export

pytestmark = pytest.mark.unit


def test_servable_exposes_the_signature_and_matches_the_model(exports: Exports) -> None:
    servable = load_servable("image", 1, exports.image_v1)
    spec = servable.inputs["image"]
    assert (spec.dtype, spec.shape) == (np.dtype("float32"), (None, 28, 28))
    assert servable.output_names == ["probabilities"]
    assert servable.max_batch is None
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.float32)
    out = servable({"image": images})["probabilities"]
    np.testing.assert_allclose(out, exports.model_v1.predict(images), rtol=1e-5, atol=1e-6)


def test_outputs_are_listed_in_sorted_name_order(exports: Exports) -> None:
    assert load_servable("multi", 1, exports.multi).output_names == ["scaled", "total"]


def test_directory_that_is_not_a_saved_model_fails_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(LoadError, match=f"cannot load SavedModel at {tmp_path}"):
        load_servable("m", 1, tmp_path)


class NoSignature(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.v = tf.Variable(1.0)


def test_saved_model_without_serving_default_is_refused(tmp_path: Path) -> None:
    tf.saved_model.save(NoSignature(), str(tmp_path / "m"))
    with pytest.raises(LoadError, match="has no 'serving_default' signature"):
        load_servable("m", 1, tmp_path / "m")


class ScalarOutput(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"mean": tf.reduce_mean(x)}


def test_output_without_batch_dimension_fails_warm_up(tmp_path: Path) -> None:
    path = export(ScalarOutput(), tmp_path, "scalar", 1)
    with pytest.raises(LoadError, match="output 'mean' has shape \\[\\] for a batch of 1"):
        load_servable("scalar", 1, path)


class FixedBatch(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([4, 2], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}


def test_fixed_first_dimension_fixes_the_batch(tmp_path: Path) -> None:
    servable = load_servable("fixed", 1, export(FixedBatch(), tmp_path, "fixed", 1))
    assert servable.max_batch == 4


class StringOutput(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"label": tf.strings.as_string(x[:, 0])}


def test_output_dtype_the_tensor_codec_cannot_carry_is_refused(tmp_path: Path) -> None:
    path = export(StringOutput(), tmp_path, "strings", 1)
    with pytest.raises(LoadError, match="output 'label' has dtype string"):
        load_servable("strings", 1, path)
