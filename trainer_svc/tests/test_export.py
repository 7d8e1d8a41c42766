"""SavedModel export: TF Serving layout, atomic versions, signature round trip (real TensorFlow)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from trainer_svc.core import tfmodel
from trainer_svc.core.export import existing_versions, export_saved_model
from trainer_svc.core.spec import JobSpec

pytestmark = pytest.mark.unit

BASE = JobSpec(
    model="trainer_svc.tests.models:tiny", train_dataset="d", epochs=1, batch_size=8, model_name="m"
)


def build(model: str = "trainer_svc.tests.models:tiny"):
    ms = tfmodel.build(dataclasses.replace(BASE, model=model))
    return ms, tfmodel.input_specs(ms)


def test_export_round_trips_through_the_serving_signature(tmp_path: Path) -> None:
    ms, specs = build()
    path, version = export_saved_model(ms, specs, tmp_path, "tiny")
    assert (path, version) == (tmp_path / "tiny" / "1", 1)
    assert (path / "saved_model.pb").exists()
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs.items()} == {"x": (tf.float32, [None, 4])}
    assert set(signature.structured_outputs) == {"probabilities"}
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    got = signature(x=tf.constant(x))["probabilities"].numpy()
    np.testing.assert_allclose(got, ms.model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_multi_input_models_take_each_feature_by_name(tmp_path: Path) -> None:
    ms, specs = build("trainer_svc.tests.models:with_embedding")
    path, _ = export_saved_model(ms, specs, tmp_path, "emb")
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs.items()} == {
        "ids": (tf.int64, [None]),
        "x": (tf.float32, [None, 2]),
    }
    ids, x = np.array([1, 9], np.int64), np.ones((2, 2), np.float32)
    got = signature(ids=tf.constant(ids), x=tf.constant(x))["value"].numpy()
    np.testing.assert_allclose(got, ms.model({"ids": ids, "x": x}).numpy(), rtol=1e-5)


def test_versions_increase_past_the_highest_and_ignore_other_names(tmp_path: Path) -> None:
    ms, specs = build()
    model_dir = tmp_path / "tiny"
    for name in ("7", "latest", ".tmp-abandoned", "0"):
        (model_dir / name).mkdir(parents=True)
    path, version = export_saved_model(ms, specs, tmp_path, "tiny")
    assert version == 8 and path == model_dir / "8"
    _, version = export_saved_model(ms, specs, tmp_path, "tiny")
    assert version == 9
    assert existing_versions(model_dir) == [7, 8, 9]
    # Our own temp dirs are gone; the foreign one is left alone.
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == [".tmp-abandoned"]
