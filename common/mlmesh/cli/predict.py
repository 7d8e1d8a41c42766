"""`mlmesh predict`: send examples through the gateway (HTTP/JSON or gRPC)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from mlmesh.cli.common import DEFAULT_ROOT, console, fail, resolve, rpc_errors
from mlmesh.clients import ServingClient, first_output, http_newest_available, http_predict


def load_input_file(path: Path, input_name: str) -> tuple[np.ndarray | None, list[Any] | None]:
    """(batched array, None) for .npy; (None, instances) for .json (a list or {"instances": [...]})."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            fail(f"{path}: not a readable .npy file: {e}")
        if arr.ndim == 0:
            fail(f"{path}: holds a scalar; expected a batch (first axis = examples)")
        return arr, None
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            fail(f"{path}: not readable JSON: {e}")
        if isinstance(data, dict) and "instances" in data:
            data = data["instances"]
        if not isinstance(data, list) or not data:
            fail(f'{path}: expected a non-empty list of instances or {{"instances": [...]}}')
        return None, data
    fail(f"{path}: unsupported input file type {suffix!r}; use .npy (a batch) or .json (instances)")


def fashion_inputs(indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    from mlmesh.data import DataUnavailable, load_fashion_mnist

    try:
        images, labels = load_fashion_mnist("test")
    except DataUnavailable as e:
        fail(str(e))
    bad = [i for i in indices if not 0 <= i < len(images)]
    if bad:
        fail(f"--fashion-index {bad[0]} is outside the test set 0..{len(images) - 1}")
    return images[indices], labels[indices]


def predict_http(
    addr: str, model: str, instances: list[Any], timeout: float = 30.0
) -> tuple[int, np.ndarray]:
    """(version, predictions) through the gateway's JSON API. TF Serving's predict JSON does not
    say which version answered, so the newest AVAILABLE one is looked up and asked for by number."""
    version = http_newest_available(addr, model, timeout)
    answer = http_predict(addr, model, instances, timeout, version=version)
    if not isinstance(answer, dict) or "predictions" not in answer:
        raise ValueError(f"the gateway answered without 'predictions': {str(answer)[:300]}")
    return version, np.asarray(answer["predictions"], dtype=np.float64)


def predict_grpc(
    addr: str, model: str, inputs: dict[str, np.ndarray], timeout: float = 30.0
) -> tuple[int, np.ndarray]:
    """(version, first output) over gRPC, to the gateway or straight to a replica."""
    with ServingClient(addr, timeout) as client:
        version, outputs = client.predict(model, inputs)
    return version, first_output(outputs)


def to_instances(arr: np.ndarray, input_name: str) -> list[dict[str, Any]]:
    return [{input_name: example.tolist()} for example in arr]


def predictions_table(preds: np.ndarray, labels: np.ndarray | None, class_names: list[str] | None) -> Table:
    table = Table(title="predictions")
    table.add_column("#", justify="right")
    table.add_column("argmax", justify="right")
    if class_names:
        table.add_column("class")
    table.add_column("score", justify="right")
    if labels is not None:
        table.add_column("label", justify="right")
    for i, row in enumerate(np.atleast_2d(preds)):
        k = int(np.argmax(row))
        cells = [str(i), str(k)]
        if class_names:
            cells.append(class_names[k] if k < len(class_names) else "?")
        cells.append(f"{float(row[k]):.4f}")
        if labels is not None:
            cells.append(str(int(labels[i])) + (" ✓" if int(labels[i]) == k else " ✗"))
        table.add_row(*cells)
    return table


def predict(
    model: Annotated[str, typer.Option(help="Model name in the repository.")] = "fashion-mnist",
    input_file: Annotated[
        Path | None,
        typer.Option("--input", exists=True, dir_okay=False, help=".npy (a batch) or .json (instances)."),
    ] = None,
    fashion_index: Annotated[
        list[int] | None, typer.Option("--fashion-index", help="Fashion-MNIST test image index (repeatable).")
    ] = None,
    input_name: Annotated[str, typer.Option(help="Model input name for array inputs.")] = "image",
    grpc_: Annotated[bool, typer.Option("--grpc", help="Use gRPC instead of HTTP/JSON.")] = False,
    raw: Annotated[bool, typer.Option("--json", help="Print the raw predictions as JSON.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1)] = 30.0,
    root: Annotated[
        Path, typer.Option("--root", help="Suite root directory (holds run/suite.json).")
    ] = DEFAULT_ROOT,
    gateway: Annotated[
        str | None, typer.Option("--gateway", help="Gateway HOST:PORT (HTTP and gRPC).")
    ] = None,
) -> None:
    """Predict through the Envoy gateway and print the predictions and their argmax."""
    if (input_file is None) == (not fashion_index):
        fail("give exactly one of --input FILE or --fashion-index I")
    labels = None
    arr: np.ndarray | None
    instances: list[Any] | None
    if fashion_index:
        arr, labels = fashion_inputs(list(fashion_index))
        instances = None
    else:
        assert input_file is not None
        arr, instances = load_input_file(input_file, input_name)
    key = "gateway_grpc" if grpc_ else "gateway_http"
    addr = resolve(root, gateway, key, "--gateway")
    with rpc_errors(f"predict {model} via {addr}"):
        if grpc_:
            if arr is not None:
                version, preds = predict_grpc(addr, model, {input_name: arr}, timeout)
            else:
                assert instances is not None
                with ServingClient(addr, timeout) as client:
                    version, out = client.predict_instances(model, instances)
                preds = np.asarray(out, dtype=np.float64)
        else:
            insts = instances if instances is not None else to_instances(arr, input_name)  # type: ignore[arg-type]
            version, preds = predict_http(addr, model, insts, timeout)
    if raw:
        console.print_json(json.dumps({"model": model, "version": version, "predictions": preds.tolist()}))
        return
    names = None
    if model.startswith("fashion-mnist") and preds.ndim == 2 and preds.shape[1] == 10:
        from mlmesh.data import CLASS_NAMES

        names = list(CLASS_NAMES)
    console.print(predictions_table(preds, labels, names))
    console.print(f"model {model} version {version} via {'gRPC' if grpc_ else 'HTTP/JSON'} {addr}")
