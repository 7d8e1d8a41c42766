"""Building models for a job: what is accepted, what is refused and why (real TensorFlow)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mlmesh.errors import InvalidArgument

from trainer_svc.core import tfmodel
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.types import DatasetInfo, FeatureInfo

pytestmark = pytest.mark.unit

BASE = JobSpec(
    model="trainer_svc.tests.models:tiny", train_dataset="d", epochs=1, batch_size=8, model_name="m"
)


def spec(model: str, **args: str) -> JobSpec:
    return dataclasses.replace(BASE, model=model, model_args=args)


@pytest.mark.parametrize(
    ("model", "args", "fragment"),
    [
        ("no_colon_here", {}, "is not of the form 'package.module:function'"),
        ("trainer_svc.tests.nonexistent:build", {}, "cannot import module 'trainer_svc.tests.nonexistent'"),
        ("trainer_svc.tests.models:missing", {}, "has no callable 'missing'"),
        ("trainer_svc.tests.models:raises", {}, "failed to build: RuntimeError: boom"),
        ("trainer_svc.tests.models:not_a_spec", {}, "returned int, expected mlmesh.model.ModelSpec"),
        ("trainer_svc.tests.models:tiny", {"colour": "red"}, "unexpected keyword argument 'colour'"),
        ("trainer_svc.tests.models:with_batchnorm", {}, "non-trainable float variables ['bn/moving_mean'"),
        ("trainer_svc.tests.models:bad_sparse", {}, "row sharding needs 2-D"),
        (
            "mlmesh.models.fashion_cnn:build",
            {"dense_units": "x"},
            "model_args['dense_units'] = 'x' is not an integer",
        ),
        ("mlmesh.models.fashion_cnn:build", {"dropout": "1"}, "unknown model_args ['dropout']"),
    ],
)
def test_unbuildable_models_are_invalid_argument_with_the_reason(
    model: str, args: dict[str, str], fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        tfmodel.build(spec(model, **args))
    assert fragment in e.value.message


def test_dropout_seed_state_is_allowed() -> None:
    ms = tfmodel.build(spec("trainer_svc.tests.models:with_dropout"))
    assert list(tfmodel.variable_values(ms)) == ["out/kernel", "out/bias"]


def test_variable_names_are_the_same_on_every_build() -> None:
    first = list(tfmodel.variable_values(tfmodel.build(spec("mlmesh.models.fashion_cnn:build"))))
    tfmodel.build(spec("trainer_svc.tests.models:tiny"))
    second = list(tfmodel.variable_values(tfmodel.build(spec("mlmesh.models.fashion_cnn:build"))))
    assert first == second
    assert first[0] == "conv2d/kernel" and first[-1] == "probabilities/bias"


def test_initial_values_follow_the_job_seed() -> None:
    def init(seed: int) -> np.ndarray:
        ms = tfmodel.build(dataclasses.replace(BASE, seed=seed))
        return tfmodel.variable_values(ms)["probabilities/kernel"]

    np.testing.assert_array_equal(init(1), init(1))
    assert not np.array_equal(init(1), init(2))


def test_shipped_fashion_model_has_the_documented_shape() -> None:
    ms = tfmodel.build(spec("mlmesh.models.fashion_cnn:build"))
    assert ms.features == ["image"] and ms.label == "label"
    assert tfmodel.input_specs(ms) == {"image": tfmodel.InputSpec("float32", (28, 28))}
    assert ms.model.count_params() == 225_034
    out = ms.model(np.full((2, 28, 28), 255.0, np.float32))
    assert tuple(out.shape) == (2, 10)
    np.testing.assert_allclose(np.sum(out, axis=1), 1.0, rtol=1e-5)


def dataset(**features: FeatureInfo) -> DatasetInfo:
    return DatasetInfo("fashion", dict(features), num_records=10, num_partitions=1)


def test_dataset_must_hold_the_features_and_label() -> None:
    ms = tfmodel.build(spec("mlmesh.models.fashion_cnn:build"))
    tfmodel.check_dataset(
        ms, dataset(image=FeatureInfo("uint8", (28, 28)), label=FeatureInfo("int64", ())), "train_dataset"
    )
    with pytest.raises(InvalidArgument, match="train_dataset 'fashion' has no feature 'label'"):
        tfmodel.check_dataset(ms, dataset(image=FeatureInfo("uint8", (28, 28))), "train_dataset")
    with pytest.raises(
        InvalidArgument, match=r"feature 'image' has shape \[32, 32\] but the model takes \[28, 28\]"
    ):
        tfmodel.check_dataset(
            ms, dataset(image=FeatureInfo("uint8", (32, 32)), label=FeatureInfo("int64", ())), "eval_dataset"
        )
