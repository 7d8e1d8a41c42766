"""The `mlmesh` CLI without a suite: help, argument errors, helpers, suite.json."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from mlmesh import clients
from mlmesh.cli import common
from mlmesh.cli.demo import auto_batch_size
from mlmesh.cli.ingest import partition_bytes_for
from mlmesh.cli.main import app
from mlmesh_testutil import popen, wait_for_file
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

runner = CliRunner()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # The CLI configures structlog onto CliRunner's stderr, which is closed afterwards.
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "ingest"),
        (["up"], "--shards"),
        (["demo"], "--limit-train"),
        (["ingest"], "fashion-mnist"),
        (["ingest", "fashion-mnist"], "--limit-test"),
        (["ingest", "npz"], "--dataset"),
        (["train"], "--model-arg"),
        (["predict"], "--fashion-index"),
        (["status"], "--root"),
        (["scale"], "serving or workers"),
    ],
)
def test_every_command_has_help(args: list[str], expected: str) -> None:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert expected in result.output


def test_cli_import_does_not_load_tensorflow() -> None:
    import sys

    code = "import sys, mlmesh.cli.main; sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_commands_without_a_suite_say_how_to_start_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--fashion-index", "0", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "suite.json is missing" in result.output and "mlmesh up" in result.output
    result = runner.invoke(app, ["status", "--root", str(tmp_path)])
    assert result.exit_code == 1


def test_predict_needs_exactly_one_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--gateway", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "exactly one of --input FILE or --fashion-index" in result.output


def test_predict_rejects_unknown_input_types(tmp_path: Path) -> None:
    bad = tmp_path / "x.txt"
    bad.write_text("1 2 3")
    result = runner.invoke(app, ["predict", "--input", str(bad), "--gateway", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "unsupported input file type '.txt'" in result.output


def test_predict_rejects_json_that_is_not_instances(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"inputs": 3}')
    result = runner.invoke(app, ["predict", "--input", str(bad), "--gateway", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "expected a non-empty list of instances" in result.output


def test_predict_to_a_dead_gateway_fails_cleanly(tmp_path: Path) -> None:
    good = tmp_path / "x.npy"
    np.save(good, np.zeros((1, 28, 28), np.float32))
    result = runner.invoke(
        app, ["predict", "--input", str(good), "--grpc", "--gateway", "127.0.0.1:1", "--timeout", "2"]
    )
    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.output


def test_train_rejects_unknown_optimizer_and_bad_model_arg(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--optimizer", "rmsprop", "--coordinator-addr", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "--optimizer 'rmsprop' is not one of sgd, momentum, adam, adagrad" in result.output
    result = runner.invoke(app, ["train", "--model-arg", "novalue", "--coordinator-addr", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "--model-arg 'novalue' is not of the form key=value" in result.output


def test_ingest_npz_rejects_disagreeing_record_counts(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(4))
    result = runner.invoke(
        app, ["ingest", "npz", "--dataset", "d", str(path), "--ingest-addr", "127.0.0.1:1"]
    )
    assert result.exit_code == 1
    assert "different record counts" in result.output


def test_ingest_npz_rejects_unsupported_dtypes_and_pickles(tmp_path: Path) -> None:
    path = tmp_path / "complex.npz"
    np.savez(path, x=np.zeros(3, np.complex64))
    result = runner.invoke(
        app, ["ingest", "npz", "--dataset", "d", str(path), "--ingest-addr", "127.0.0.1:1"]
    )
    assert result.exit_code == 1
    assert "dtype complex64 is not supported" in result.output
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    result = runner.invoke(
        app, ["ingest", "npz", "--dataset", "d", str(path), "--ingest-addr", "127.0.0.1:1"]
    )
    assert result.exit_code == 1
    assert "not a readable .npz" in result.output


def test_record_batches_are_about_one_mib_and_cover_every_record() -> None:
    arrays = {
        "image": np.arange(5000 * 784, dtype=np.uint32).astype(np.uint8).reshape(5000, 28, 28),
        "label": np.arange(5000, dtype=np.int64),
    }
    batches = list(clients.record_batches(arrays))
    per_record = 784 + 8
    assert all(len(b["label"]) == (1 << 20) // per_record for b in batches[:-1])
    assert sum(b["image"].nbytes + b["label"].nbytes for b in batches[:-1]) / (len(batches) - 1) <= 1 << 20
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), arrays["label"])
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), arrays["image"])


def test_schema_uses_per_record_shapes_sorted_by_name() -> None:
    schema = clients.schema_of({"label": np.zeros(3, np.int64), "image": np.zeros((3, 28, 28), np.uint8)})
    assert [(f.name, list(f.shape)) for f in schema.features] == [("image", [28, 28]), ("label", [])]
    with pytest.raises(ValueError, match="feature 'x' is a scalar"):
        clients.schema_of({"x": np.float32(1)})


def test_partition_bytes_target_the_partition_count() -> None:
    mpb = partition_bytes_for(60_000, 792, 16)
    assert 60_000 // (mpb // 792) in (15, 16)
    assert partition_bytes_for(10, 792, 16) == 64 * 1024  # never below the floor


def test_suite_file_round_trips_atomically(tmp_path: Path) -> None:
    addrs = common.SuiteAddresses(
        root=tmp_path, ingest="127.0.0.1:1", ps=["a", "b"], serving=["c"], supervisor_pid=7
    )
    path = common.write_suite(addrs)
    assert path == tmp_path / "run" / "suite.json"
    assert [p.name for p in path.parent.iterdir()] == ["suite.json"]  # no temp file left
    back = common.read_suite(tmp_path)
    assert back is not None and back.to_json() == addrs.to_json()


def test_up_refuses_a_second_suite_on_the_same_root(tmp_path: Path) -> None:
    common.write_suite(common.SuiteAddresses(root=tmp_path, supervisor_pid=os.getpid()))
    result = runner.invoke(app, ["up", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "already running" in result.output


def test_status_reports_health_of_each_service(tmp_path: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    port_file = tmp_path / "tiny.json"
    proc = popen(["-m", "mlmesh_tinysvc", "--port-file", str(port_file)], tmp_path / "tiny.log")
    spawn.append(proc)
    wait_for_file(port_file)
    addr = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
    services = [
        {"name": "tiny", "addr": addr, "pid": proc.pid},
        {"name": "gone", "addr": "127.0.0.1:1", "pid": 1},
    ]
    common.write_suite(common.SuiteAddresses(root=tmp_path, supervisor_pid=os.getpid(), services=services))
    result = runner.invoke(app, ["status", "--root", str(tmp_path), "--timeout", "1"])
    assert result.exit_code == 1  # one service is down
    lines = result.output.splitlines()
    assert any("tiny" in line and "SERVING" in line for line in lines)
    assert any("gone" in line and "UNREACHABLE" in line for line in lines)


def test_demo_batch_size_shrinks_so_small_runs_still_take_about_100_steps() -> None:
    assert auto_batch_size(60_000) == 64
    assert auto_batch_size(6_400) == 64
    assert auto_batch_size(6_000) == 32
    assert auto_batch_size(3_000) == 16
    assert auto_batch_size(10) == 16  # never below 16


def test_service_command_runs_the_named_service_with_its_own_flags() -> None:
    import subprocess
    import sys

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlmesh.cli.main",
            "service",
            "paramserver",
            "--shard-index",
            "3",
            "--num-shards",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "shard_index" in bad.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "mlmesh.cli.main", "service", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2
    assert "unknown service 'nope'" in unknown.stderr


def test_suite_children_import_the_same_mlmesh_as_the_cli() -> None:
    import mlmesh
    from mlmesh.cli.suite import child_env, source_root

    if source_root() is None:
        pytest.skip("mlmesh is installed, not run from a checkout")
    parts = child_env()["PYTHONPATH"].split(os.pathsep)
    # Its own directory first: a worktree run with another checkout's venv must not mix the two.
    assert parts[:2] == [str(Path(mlmesh.__file__).resolve().parents[1]), str(source_root())]


def test_scale_refuses_an_unknown_kind_and_a_root_without_a_suite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["scale", "ingest", "2", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "cannot scale 'ingest': choose serving or workers" in result.output
    result = runner.invoke(app, ["scale", "serving", "2", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "no running suite under" in result.output
    assert not (tmp_path / "run" / "scale.json").exists()  # nothing asked of a suite that is not there
