"""`mlmesh train --workload`: which options the workload sets, and failing clearly (no suite needed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from mlmesh.cli.main import app
from mlmesh.cli.workloads import WORKLOADS
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

runner = CliRunner()
# Nothing listens on port 1: calls fail at once with UNAVAILABLE.
NOWHERE = ["--coordinator-addr", "127.0.0.1:1", "--ingest-addr", "127.0.0.1:1"]


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_an_unknown_workload_lists_the_known_ones() -> None:
    result = runner.invoke(app, ["train", "--workload", "imagenet"])
    assert result.exit_code == 1
    assert "--workload 'imagenet' is not one of movielens, fashion-mnist" in result.output


def test_the_workload_fills_every_option_not_given_and_the_summary_says_why_it_failed(
    tmp_path: Path,
) -> None:
    summary = tmp_path / "s.json"
    args = ["train", "--workload", "movielens", "--epochs", "2", "--summary", str(summary), *NOWHERE]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "ingest at 127.0.0.1:1: UNAVAILABLE" in result.output
    got = json.loads(summary.read_text())
    preset = WORKLOADS["movielens"]
    assert got["ok"] is False and "error" in got
    assert got["epochs"] == 2  # given: kept
    assert (got["model"], got["train_dataset"], got["eval_dataset"]) == (
        "mlmesh.models.movielens_mf:build",
        "movielens-train",
        "movielens-test",
    )
    assert (got["batch_size"], got["optimizer"], got["learning_rate"]) == (
        preset.batch_size,
        preset.optimizer,
        preset.lr,
    )
    assert len(got["load_average"]) == 3


def test_a_given_option_equal_to_the_commands_default_still_wins(tmp_path: Path) -> None:
    # --batch-size 64 is `train`'s own default; given explicitly, the workload must not replace it.
    summary = tmp_path / "s.json"
    args = ["train", "--workload", "movielens", "--batch-size", "64", "--summary", str(summary), *NOWHERE]
    assert runner.invoke(app, args).exit_code == 1
    assert json.loads(summary.read_text())["batch_size"] == 64


def test_summary_needs_the_job_followed() -> None:
    result = runner.invoke(app, ["train", "--detach", "--summary", "x.json", *NOWHERE])
    assert result.exit_code == 1
    assert "--summary needs the job followed to its end" in result.output


def test_without_a_workload_train_still_needs_a_running_suite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "no running suite" in result.output and "mlmesh up" in result.output


def test_detach_with_a_workload_needs_a_running_suite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--workload", "movielens", "--detach", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "--detach needs a running suite" in result.output
    assert not (tmp_path / "run").exists()  # nothing was started
