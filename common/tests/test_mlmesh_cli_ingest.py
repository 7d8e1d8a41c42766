"""`mlmesh ingest` against a real ingest_svc process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from mlmesh.cli.main import app
from mlmesh.clients import IngestClient
from mlmesh.data import fashion_mnist as fm
from mlmesh.data import movielens as ml
from mlmesh.tensor import dtype_name
from mlmesh_testutil import popen, wait_for_file
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # The CLI configures structlog onto CliRunner's stderr, which is closed afterwards.
    yield
    structlog.reset_defaults()


@pytest.fixture
def ingest_addr(tmp_path: Path, spawn: list[subprocess.Popen[bytes]]) -> str:
    port_file = tmp_path / "ingest.json"
    spawn.append(
        popen(
            [
                "-m",
                "ingest_svc",
                "--data-dir",
                str(tmp_path / "data"),
                "--port-file",
                str(port_file),
                "--log-format",
                "json",
            ],
            tmp_path / "ingest.log",
            env=_source_env(),
        )
    )
    wait_for_file(port_file, timeout=30)
    return f"127.0.0.1:{json.loads(port_file.read_text())['port']}"


def _source_env() -> dict[str, str]:
    from mlmesh.cli.suite import child_env

    env = child_env()
    from mlmesh_testutil import tiny_env

    env["PYTHONPATH"] = env.get("PYTHONPATH", "") + ":" + tiny_env()["PYTHONPATH"]
    return env


def test_npz_features_keep_dtype_and_per_record_shape(tmp_path: Path, ingest_addr: str) -> None:
    path = tmp_path / "mine.npz"
    x = np.random.default_rng(0).standard_normal((500, 3, 4)).astype(np.float32)
    y = np.arange(500, dtype=np.int32)
    np.savez(path, x=x, y=y)
    args = ["ingest", "npz", "--dataset", "mine", str(path), "--ingest-addr", ingest_addr]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "appended 500 records" in result.output
    with IngestClient(ingest_addr) as client:
        ds = client.get_dataset("mine")
    assert ds is not None and ds.num_records == 500
    assert [(f.name, dtype_name(f.dtype), list(f.shape)) for f in ds.schema.features] == [
        ("x", "float32", [3, 4]),
        ("y", "int32", []),
    ]
    # Running it again does not duplicate the data; --append does.
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "left as is" in result.output
    result = runner.invoke(app, [*args, "--append"])
    assert result.exit_code == 0, result.output
    with IngestClient(ingest_addr) as client:
        assert client.get_dataset("mine").num_records == 1000  # type: ignore[union-attr]


def test_npz_with_another_schema_is_already_exists(tmp_path: Path, ingest_addr: str) -> None:
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(first, x=np.zeros((2, 3), np.float32))
    np.savez(second, x=np.zeros((2, 4), np.float32))
    base = ["ingest", "npz", "--dataset", "clash", "--ingest-addr", ingest_addr]
    assert runner.invoke(app, [*base, str(first)]).exit_code == 0
    result = runner.invoke(app, [*base, str(second)])
    assert result.exit_code == 1
    assert "ALREADY_EXISTS" in result.output


@pytest.mark.skipif(fm.resolve_dir() is None, reason="Fashion-MNIST files not available offline")
def test_fashion_mnist_is_cut_into_the_asked_partitions(ingest_addr: str) -> None:
    result = runner.invoke(
        app,
        [
            "ingest",
            "fashion-mnist",
            "--limit-train",
            "2000",
            "--limit-test",
            "300",
            "--partitions",
            "4",
            "--ingest-addr",
            ingest_addr,
        ],
    )
    assert result.exit_code == 0, result.output
    with IngestClient(ingest_addr) as client:
        train = client.get_dataset("fashion-mnist-train")
        test = client.get_dataset("fashion-mnist-test")
    assert train is not None and train.num_records == 2000 and train.num_partitions == 4
    assert test is not None and test.num_records == 300
    assert [(f.name, dtype_name(f.dtype), list(f.shape)) for f in train.schema.features] == [
        ("image", "uint8", [28, 28]),
        ("label", "int64", []),
    ]


@pytest.mark.skipif(ml.recbole_file() is None, reason="recbole (carries ml-100k.inter) is not installed")
def test_movielens_becomes_an_80_20_split_and_a_second_run_leaves_it(ingest_addr: str) -> None:
    args = ["ingest", "movielens", "--partitions", "4", "--ingest-addr", ingest_addr]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "movielens-train: appended 80,000 records in 4 partitions" in result.output
    with IngestClient(ingest_addr) as client:
        train = client.get_dataset("movielens-train")
        test = client.get_dataset("movielens-test")
    assert train is not None and train.num_records == 80_000
    assert test is not None and test.num_records == 20_000
    assert {f.name: (dtype_name(f.dtype), list(f.shape)) for f in train.schema.features} == {
        "user": ("int64", []),
        "item": ("int64", []),
        "rating": ("float32", []),
    }
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "left as is" in result.output
