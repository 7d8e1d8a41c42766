"""The loader turns a SavedModel into a servable that runs any of its signatures' graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from mlmesh.errors import InvalidArgument

from serving_svc.core.loader import LoadError, load_servable
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import export
from serving_svc.tests.tfs_models import export_half_plus_three, export_sensor_model

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


def test_every_signature_is_loaded_with_its_method_and_specs(tmp_path: Path) -> None:
    servable = load_servable("half", 123, export_half_plus_three(tmp_path, "half", 123))
    methods = {name: sig.method for name, sig in servable.signatures.items()}
    assert methods == {
        "serving_default": "tensorflow/serving/predict",
        "tensorflow/serving/classify": "tensorflow/serving/classify",
        "tensorflow/serving/regress": "tensorflow/serving/regress",
    }
    regress = servable.signatures["tensorflow/serving/regress"]
    assert regress.inputs["inputs"].describe() == "string[?]"
    assert regress.outputs["outputs"].describe() == "float32[?,1]"
    assert servable.signature_defs["tensorflow/serving/classify"].outputs["classes"].dtype == tf.string


def test_a_signature_other_than_serving_default_is_callable_by_name(tmp_path: Path) -> None:
    servable = load_servable("sensor", 1, export_sensor_model(tmp_path))
    signal = np.array([[1, 5, 2, 0, 3]], np.float32)
    np.testing.assert_array_equal(servable.call("peak", {"signal": signal})["peak"], [5.0])


def test_unknown_signature_is_invalid_argument_listing_the_signatures(tmp_path: Path) -> None:
    servable = load_servable("sensor", 1, export_sensor_model(tmp_path))
    with pytest.raises(
        InvalidArgument, match=r"Serving signature key \"nope\" not found: .*\['peak', 'serving_default'\]"
    ):
        servable.signature("nope")


class StringOutput(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"label": tf.strings.as_string(x[:, 0])}


def test_string_outputs_are_served_as_tf_serving_does(tmp_path: Path) -> None:
    servable = load_servable("strings", 1, export(StringOutput(), tmp_path, "strings", 1))
    out = servable({"x": np.array([[1.5, 0]], np.float32)})["label"]
    assert out.tolist() == [b"1.500000"]
