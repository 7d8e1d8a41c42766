"""`mlmesh demo` end to end: every service as a real process, real TensorFlow, real Envoy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_util import processes_mentioning, run_to_end, tail

pytestmark = pytest.mark.integration

DEMO_TIMEOUT = 900


def test_demo_trains_serves_and_answers_the_same_through_envoy(tmp_path: Path) -> None:
    root = tmp_path / "suite"
    log = tmp_path / "demo.log"
    args = ["demo", "--limit-train", "3000", "--limit-test", "1000", "--epochs", "1", "--root", str(root)]
    rc, leftovers = run_to_end(args, log, tmp_path, root, DEMO_TIMEOUT)
    summary_path = root / "demo-summary.json"
    assert summary_path.exists(), tail(log)
    summary = json.loads(summary_path.read_text())
    assert rc == 0, f"demo failed: {summary.get('error')}\n{tail(log)}"
    assert summary["ok"] is True
    assert summary["test_accuracy"] > 0.5
    assert summary["gateway_http_ok"] is True
    assert summary["gateway_grpc_ok"] is True
    assert summary["workers"] == 2
    assert summary["ps_shards"] == 2
    assert summary["serving_replicas"] == 2
    assert summary["replicas_available"] == 2
    assert summary["train_records"] == 3000 and summary["test_records"] == 1000
    assert summary["steps"] > 0 and summary["examples_per_second"] > 0
    assert summary["model_version"] >= 1
    assert Path(summary["export_path"]).is_dir()
    assert (root / "models" / "fashion-mnist" / str(summary["model_version"])).is_dir()
    for key in ("eval_loss", "train_seconds", "ingest_seconds", "total_seconds"):
        assert key in summary, key
    # Nothing the demo started is still running, and it removed its suite file.
    assert len(summary["pids"]) == 10  # ingest, 2 shards, 2 replicas, coordinator, xds, gateway, 2 workers
    assert leftovers == [], leftovers
    assert processes_mentioning(str(root)) == []
    assert not (root / "run" / "suite.json").exists()
