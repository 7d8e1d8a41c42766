"""Job spec validation and normalization (pure)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from mlmesh.errors import InvalidArgument

from trainer_svc.core.spec import JobSpec, validate_job_id, validate_spec
from trainer_svc.core.types import OptimizerConfig

pytestmark = pytest.mark.unit


def spec(**overrides: object) -> JobSpec:
    base = JobSpec(
        model="mlmesh.models.fashion_cnn:build",
        train_dataset="fashion-mnist-train",
        epochs=3,
        batch_size=64,
        model_name="fashion-mnist",
        eval_dataset="fashion-mnist-test",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_missing_optimizer_becomes_adam_with_keras_defaults() -> None:
    out = validate_spec(spec(optimizer=OptimizerConfig("", 0.0)))
    assert out.optimizer == OptimizerConfig("adam", 1e-3, 0.9, 0.999, 1e-7)


def test_zero_fields_of_a_named_optimizer_take_defaults() -> None:
    assert validate_spec(spec(optimizer=OptimizerConfig("sgd", 0.0))).optimizer == OptimizerConfig(
        "sgd", 1e-3
    )
    assert validate_spec(spec(optimizer=OptimizerConfig("ADAGRAD", 0.1))).optimizer == OptimizerConfig(
        "adagrad", 0.1, epsilon=1e-7
    )


def test_equivalent_specs_compare_equal_after_normalization() -> None:
    a = validate_spec(spec(optimizer=OptimizerConfig("adam", 1e-3)))
    b = validate_spec(spec(optimizer=OptimizerConfig("adam", 1e-3, 0.9, 0.999, 1e-7)))
    assert a == b


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"model": ""}, "spec.model is required"),
        ({"train_dataset": ""}, "spec.train_dataset is required"),
        ({"epochs": 0}, "spec.epochs must be in 1..1000, got 0"),
        ({"epochs": -2}, "got -2"),
        ({"batch_size": 0}, "spec.batch_size must be in 1..65536, got 0"),
        ({"model_name": ""}, "spec.model_name is required"),
        ({"model_name": "../escape"}, "not a valid directory name"),
        ({"model_name": "a/b"}, "not a valid directory name"),
        ({"eval_max_records": -1}, "eval_max_records must be >= 0"),
        ({"model_args": {"not an identifier": "1"}}, "not a valid Python identifier"),
        ({"optimizer": OptimizerConfig("rmsprop", 1e-3)}, "optimizer.kind 'rmsprop' is not supported"),
        ({"optimizer": OptimizerConfig("adam", -0.1)}, "learning_rate must be in (0, 10], got -0.1"),
        ({"optimizer": OptimizerConfig("adam", math.nan)}, "learning_rate must be finite"),
        ({"optimizer": OptimizerConfig("adam", 1e-3, beta_1=1.5)}, "beta_1 must be in (0, 1), got 1.5"),
        ({"optimizer": OptimizerConfig("adagrad", 1e-3, epsilon=-1.0)}, "epsilon must be >= 0"),
    ],
)
def test_bad_fields_are_invalid_argument_naming_the_field(
    overrides: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        validate_spec(spec(**overrides))
    assert fragment in e.value.message


@pytest.mark.parametrize("job_id", ["", "-lead", "a" * 129, "x/y", ".."])
def test_bad_job_ids_are_rejected(job_id: str) -> None:
    with pytest.raises(InvalidArgument, match="job_id"):
        validate_job_id(job_id)


def test_spec_round_trips_through_its_json_form() -> None:
    original = validate_spec(spec(model_args={"dense_units": "64"}, seed=-5))
    assert JobSpec.from_dict(original.to_dict()) == original
