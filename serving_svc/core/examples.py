"""tf.Example inputs of classify and regress signatures.

Both signatures take one string tensor ("inputs") of serialized tf.Examples.
gRPC clients send `tensorflow.serving.Input` (a list, or a list plus a
context whose features every example shares); REST clients send JSON objects
{feature: value | [values]}, which become Examples here the way TF Serving
builds them: integers → int64_list, other numbers → float_list, strings and
{"b64": ...} → bytes_list.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from mlmesh.errors import InvalidArgument
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import input_pb2

MAX_EXAMPLES = 1 << 20


def _object_array(items: Sequence[bytes]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The examples of an Input, serialized, with the context merged into each."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = request_input.example_list.examples
        if not examples:
            raise InvalidArgument("input.example_list has no examples")
        return _object_array([e.SerializeToString() for e in examples])
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        if not listed.examples:
            raise InvalidArgument("input.example_list_with_context has no examples")
        merged = []
        for example in listed.examples:
            copy = example_pb2.Example()
            copy.CopyFrom(listed.context)
            copy.MergeFrom(example)
            merged.append(copy.SerializeToString())
        return _object_array(merged)
    raise InvalidArgument("input has neither example_list nor example_list_with_context")


def _feature(name: str, value: Any, where: str) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    if not values:
        return feature_pb2.Feature(float_list=feature_pb2.FloatList())
    if all(isinstance(v, bool) for v in values) or all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v) for v in values]))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[float(v) for v in values]))
    out: list[bytes] = []
    for v in values:
        if isinstance(v, str):
            out.append(v.encode())
        elif isinstance(v, dict) and set(v) == {"b64"} and isinstance(v["b64"], str):
            try:
                out.append(base64.b64decode(v["b64"], validate=True))
            except binascii.Error as e:
                raise InvalidArgument(f"{where} feature {name!r} has invalid base64: {e}") from None
        else:
            raise InvalidArgument(
                f"{where} feature {name!r} mixes kinds or holds a {type(v).__name__}; "
                'expected numbers, strings or {"b64": ...} (all of one kind)'
            )
    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=out))


def example_from_json(obj: Mapping[str, Any], where: str) -> example_pb2.Example:
    example = example_pb2.Example()
    for name, value in obj.items():
        example.features.feature[name].CopyFrom(_feature(name, value, where))
    return example


def examples_from_json(examples: Sequence[Any], context: Mapping[str, Any] | None) -> np.ndarray:
    """REST `examples` (+ `context`) → serialized tf.Examples; InvalidArgument names the example."""
    if not examples:
        raise InvalidArgument("'examples' is empty: send at least one example")
    if len(examples) > MAX_EXAMPLES:
        raise InvalidArgument(f"{len(examples)} examples exceed the limit of {MAX_EXAMPLES}")
    shared = example_from_json(context or {}, "context")
    out = []
    for i, obj in enumerate(examples):
        if not isinstance(obj, dict):
            raise InvalidArgument(
                f"example {i} is a {type(obj).__name__}; expected an object {{feature: value}}"
            )
        if context and (overlap := sorted(set(obj) & set(context))):
            raise InvalidArgument(f"example {i} repeats context features {overlap}")
        example = example_pb2.Example()
        example.CopyFrom(shared)
        example.MergeFrom(example_from_json(obj, f"example {i}"))
        out.append(example.SerializeToString())
    return _object_array(out)
