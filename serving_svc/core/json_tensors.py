"""Output arrays → TF Serving's REST JSON (plain Python values, ready for a protobuf Value).

Row format (`predictions`): one entry per example; the bare value when the
signature returns one output, else an object {output: value}. Columnar
format (`outputs`): the tensor itself, or an object {output: tensor}.
Strings are UTF-8 text; outputs whose name ends in `_bytes` are binary and
come as {"b64": ...}, as TF Serving encodes them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _leaves(value: Any, fn: Any) -> Any:
    if isinstance(value, list):
        return [_leaves(v, fn) for v in value]
    return fn(value)


def to_json(arr: np.ndarray, name: str) -> Any:
    if arr.dtype.kind not in "OS":
        return arr.tolist()
    if name.endswith("_bytes"):
        return _leaves(arr.tolist(), lambda b: {"b64": base64.b64encode(bytes(b)).decode()})
    return _leaves(arr.tolist(), lambda b: b.decode(errors="replace") if isinstance(b, bytes) else str(b))


def rows(outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> list[Any]:
    if len(names) == 1:
        return to_json(outputs[names[0]], names[0])  # type: ignore[no-any-return]
    columns = {name: to_json(outputs[name], name) for name in names}
    n = len(outputs[names[0]])
    return [{name: columns[name][i] for name in names} for i in range(n)]


def columns(outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> Any:
    if len(names) == 1:
        return to_json(outputs[names[0]], names[0])
    return {name: to_json(outputs[name], name) for name in names}
