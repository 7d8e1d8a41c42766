"""Request inputs are checked against the signature and cast only where no value changes."""

from __future__ import annotations

import numpy as np
import pytest
from mlmesh.errors import InvalidArgument

from serving_svc.core.inputs import cast_to, prepare_columns, prepare_instances, prepare_tensors
from serving_svc.core.signature import InputSpec

pytestmark = pytest.mark.unit

IMAGE = {"image": InputSpec("image", np.dtype("float32"), (None, 28, 28))}
MULTI = {
    "a": InputSpec("a", np.dtype("float32"), (None, 3)),
    "b": InputSpec("b", np.dtype("int64"), (None,)),
}
F32, I64, U8 = np.dtype("float32"), np.dtype("int64"), np.dtype("uint8")


def test_uint8_pixels_are_cast_to_float32() -> None:
    arrays, n = prepare_tensors(IMAGE, {"image": np.full((2, 28, 28), 255, np.uint8)}, 10)
    assert n == 2
    assert arrays["image"].dtype == F32 and arrays["image"].max() == 255.0


def test_shape_mismatch_names_input_shape_and_expectation() -> None:
    with pytest.raises(InvalidArgument) as e:
        prepare_tensors(IMAGE, {"image": np.zeros((2, 27, 28), np.float32)}, 10)
    assert e.value.message == "input 'image' has shape [2,27,28] but the model expects [?,28,28]"


def test_missing_and_unexpected_inputs_are_named() -> None:
    with pytest.raises(InvalidArgument, match=r"missing \['b'\], unexpected \['c'\]"):
        prepare_tensors(MULTI, {"a": np.zeros((1, 3), np.float32), "c": np.zeros(1)}, 10)


def test_inputs_must_agree_on_batch_size() -> None:
    with pytest.raises(InvalidArgument, match=r"different batch sizes \{'a': 2, 'b': 3\}"):
        prepare_tensors(MULTI, {"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.int64)}, 10)


def test_empty_batch_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="batch size is 0"):
        prepare_tensors(IMAGE, {"image": np.zeros((0, 28, 28), np.float32)}, 10)


def test_batch_above_the_limit_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="batch size 11 exceeds the limit of 10"):
        prepare_tensors(IMAGE, {"image": np.zeros((11, 28, 28), np.float32)}, 10)


def test_scalar_input_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="input 'b' is a scalar"):
        prepare_tensors(MULTI, {"a": np.zeros((1, 3), np.float32), "b": np.array(3)}, 10)


@pytest.mark.parametrize(
    ("values", "target", "expected"),
    [
        (np.array([1, 2], np.int32), F32, np.array([1.0, 2.0], np.float32)),
        (np.array([True, False]), F32, np.array([1.0, 0.0], np.float32)),
        (np.array([1.5], np.float64), F32, np.array([1.5], np.float32)),
        (np.array([3.0, -2.0], np.float64), I64, np.array([3, -2], np.int64)),
        (np.array([7], np.int64), U8, np.array([7], np.uint8)),
        (np.array([1, 2], np.int8), I64, np.array([1, 2], np.int64)),
    ],
)
def test_value_preserving_casts(values: np.ndarray, target: np.dtype, expected: np.ndarray) -> None:
    out = cast_to(values, target, "input 'x'")
    assert out.dtype == target
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("values", "target", "message"),
    [
        (np.array([1.5], np.float32), I64, "non-integer values"),
        (np.array([np.nan], np.float64), I64, "NaN or infinite"),
        (np.array([300], np.int64), U8, r"values range over \[300, 300\] but uint8 holds \[0, 255\]"),
        (np.array([-1], np.int32), U8, "values range over"),
        (np.array([1e300], np.float64), F32, "overflow float32"),
        (np.array([1.0], np.float32), np.dtype("bool"), "only bool values"),
    ],
)
def test_lossy_casts_are_refused(values: np.ndarray, target: np.dtype, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as e:
        cast_to(values, target, "input 'x'")
    assert e.value.message.startswith(
        f"input 'x' has dtype {values.dtype.name} but the model expects {target.name}"
    )


def test_instances_of_a_single_input_model_are_the_examples() -> None:
    rows = np.arange(2 * 28 * 28, dtype=np.float64).reshape(2, 28, 28) % 256
    arrays, n = prepare_instances(IMAGE, rows.tolist(), 10)
    assert n == 2 and arrays["image"].dtype == F32
    np.testing.assert_array_equal(arrays["image"], rows.astype(np.float32))


def test_instances_may_name_the_input_of_a_single_input_model() -> None:
    arrays, _ = prepare_instances(IMAGE, [{"image": np.zeros((28, 28)).tolist()}], 10)
    assert arrays["image"].shape == (1, 28, 28)


def test_instances_of_a_multi_input_model_are_objects() -> None:
    arrays, n = prepare_instances(MULTI, [{"a": [1, 2, 3], "b": 4.0}, {"a": [0, 0, 1], "b": 5.0}], 10)
    assert n == 2
    np.testing.assert_array_equal(arrays["a"], np.array([[1, 2, 3], [0, 0, 1]], np.float32))
    assert arrays["b"].dtype == I64 and arrays["b"].tolist() == [4, 5]


@pytest.mark.parametrize(
    ("specs", "instances", "message"),
    [
        (
            IMAGE,
            [np.zeros((28, 28)).tolist(), np.zeros((27, 28)).tolist()],
            "instance 1 input 'image' has shape",
        ),
        (IMAGE, [[[1.0, 2.0], [3.0]]], "instance 0 input 'image' is not a rectangular array"),
        (IMAGE, [["a"] * 28] * 1, "instance 0 input 'image' holds non-numeric"),
        (MULTI, [{"a": [1, 2, 3], "b": 1.0}, [1, 2, 3]], "instance 1 is a list but the model has inputs"),
        (MULTI, [{"a": [1, 2, 3]}], r"instance 0: inputs \['a'\] do not match .* missing \['b'\]"),
        (
            MULTI,
            [{"a": [1, 2, 3], "b": 1.5}],
            "instance 0 input 'b' has dtype float64 but the model expects int64",
        ),
        (MULTI, [{"a": [1, 2, 3], "b": None}], "instance 0 input 'b' holds null"),
        (IMAGE, [], "batch size is 0"),
    ],
)
def test_bad_instances_name_the_instance(
    specs: dict[str, InputSpec], instances: list[object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        prepare_instances(specs, instances, 10)


def test_instances_with_variable_dims_must_agree_to_batch() -> None:
    ragged = {"seq": InputSpec("seq", F32, (None, None))}
    assert prepare_instances(ragged, [[1.0, 2.0], [3.0, 4.0]], 10)[0]["seq"].shape == (2, 2)
    with pytest.raises(InvalidArgument, match=r"different shapes \['\[1\]', '\[2\]'\]"):
        prepare_instances(ragged, [[1.0, 2.0], [3.0]], 10)


SENSOR = {
    "tag": InputSpec("tag", np.dtype(object), (None,)),
    "signal": InputSpec("signal", F32, (None, 5)),
}
MULTI_ONE = {"a": MULTI["a"]}


def test_string_instances_and_b64_objects_become_bytes() -> None:
    instances = [{"tag": "foo", "signal": [1, 2, 3, 4, 5]}, {"tag": {"b64": "AP8="}, "signal": [0] * 5}]
    arrays, n = prepare_instances(SENSOR, instances, 10)
    assert n == 2
    assert arrays["tag"].tolist() == [b"foo", b"\x00\xff"]
    assert arrays["signal"].dtype == F32


def test_columnar_inputs_are_named_tensors_or_the_one_input_itself() -> None:
    arrays, n = prepare_columns(SENSOR, {"tag": ["a", "b"], "signal": [[1] * 5, [2] * 5]}, 10)
    assert n == 2 and arrays["tag"].tolist() == [b"a", b"b"]
    arrays, n = prepare_columns(MULTI_ONE, [[1, 2, 3]], 10)
    assert n == 1 and arrays["a"].tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"tag": [1, 2], "signal": [[1] * 5] * 2}, "input 'tag' holds a number; the model expects strings"),
        ({"tag": ["a"], "signal": [["x"] * 5]}, "input 'signal' holds non-numeric or ragged values"),
        ({"tag": [{"b64": "!!"}], "signal": [[1] * 5]}, "input 'tag' has invalid base64"),
        ([[1] * 5], "'inputs' is a list but the model has inputs ['signal', 'tag']"),
    ],
)
def test_bad_columnar_inputs_name_the_input(inputs: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        prepare_columns(SENSOR, inputs, 10)
    assert message in e.value.message


def test_numbers_for_a_string_input_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="input 'tag' has dtype float64 but the model expects string"):
        prepare_tensors(SENSOR, {"tag": np.zeros(1), "signal": np.zeros((1, 5), np.float32)}, 10)
