"""A parameter-server shard killed with SIGKILL in the middle of a job, under `mlmesh up`:
the supervisor restarts it, it restores its newest checkpoint, the workers back off and
retry meanwhile, and the job continues and completes. The updates lost are at most those
since that checkpoint; the test reports how many."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_util import mlmesh, service_entry, stop, tail, wait_gone, wait_json, wait_restarted
from mlmesh.channels import sync_channel
from mlmesh.clients import TrainerClient, job_spec, job_state_name
from mlmesh.paramserver.v1 import paramserver_pb2 as pb
from mlmesh.paramserver.v1 import paramserver_pb2_grpc
from mlmesh.trainer.v1 import trainer_pb2

pytestmark = pytest.mark.faults

UP_TIMEOUT = 240
CHECKPOINT_EVERY_STEPS = 25


def shard_job(addr: str, job_id: str) -> pb.JobInfo | None:
    with sync_channel(addr) as ch:
        info = paramserver_pb2_grpc.ParameterServerServiceStub(ch).GetShardInfo(
            pb.GetShardInfoRequest(), timeout=10
        )
    return next((j for j in info.jobs if j.job_id == job_id), None)


def finished_shard_job(addr: str, job_id: str) -> pb.JobInfo | None:
    """A finished job loaded back from the final checkpoint its release (DropJob) wrote."""
    deadline = time.monotonic() + 30
    with sync_channel(addr) as ch:
        stub = paramserver_pb2_grpc.ParameterServerServiceStub(ch)
        while job_id not in stub.GetShardInfo(pb.GetShardInfoRequest(), timeout=10).dropped_jobs:
            assert time.monotonic() < deadline, f"job {job_id} was not released on {addr}"
            time.sleep(0.1)
        stub.LoadCheckpoint(pb.LoadCheckpointRequest(job_id=job_id), timeout=60)
    return shard_job(addr, job_id)


def test_shard_killed_mid_job_resumes_from_its_checkpoint_and_the_job_completes(tmp_path: Path) -> None:
    root = tmp_path / "suite"
    log = tmp_path / "up.log"
    proc = mlmesh(
        ["up", "--root", str(root), "--shards", "2", "--replicas", "1", "--workers", "2",
         "--checkpoint-every-steps", str(CHECKPOINT_EVERY_STEPS)],
        log, tmp_path, {"MLMESH_TRAINER_CHECKPOINT_SECONDS": "1"},
    )  # fmt: skip
    try:
        suite_file = root / "run" / "suite.json"
        suite = wait_json(suite_file, UP_TIMEOUT, proc, log)
        ingest = subprocess.run(
            [sys.executable, "-m", "mlmesh.cli.main", "ingest", "fashion-mnist", "--root", str(root),
             "--limit-train", "3000", "--limit-test", "1000", "--partitions", "8"],
            cwd=tmp_path, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        spec = job_spec(
            model="mlmesh.models.fashion_cnn:build",
            train_dataset="fashion-mnist-train",
            eval_dataset="fashion-mnist-test",
            epochs=6,
            batch_size=32,
            model_name="recovery",
            consistency="sync",
        )
        with TrainerClient(suite["coordinator"]) as trainer:
            job_id = trainer.create_job(spec, "recovery").job_id
            victim = service_entry(suite, "ps-1")
            deadline = time.monotonic() + 180
            while (
                info := shard_job(victim["addr"], job_id)
            ) is None or info.clock < 3 * CHECKPOINT_EVERY_STEPS:
                assert time.monotonic() < deadline, "the job made no progress"
                time.sleep(0.1)
            survivor_before = shard_job(service_entry(suite, "ps-0")["addr"], job_id)
            assert survivor_before is not None
            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = info.clock
            back = wait_restarted(suite_file, "ps-1", victim["pid"])
            assert back["addr"] == victim["addr"]  # same address: the workers find it again

            deadline = time.monotonic() + 300
            while (job := trainer.get_job(job_id)).state not in (
                trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED
            ):  # fmt: skip
                assert time.monotonic() < deadline, f"job still {job_state_name(job.state)}"
                time.sleep(0.5)
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
        assert job.tasks_completed == job.tasks_total
        assert job.eval_metrics["accuracy"] > 0.6

        # The coordinator released the finished job (DropJob); its final checkpoints hold it.
        restarted = finished_shard_job(back["addr"], job_id)
        survivor = finished_shard_job(service_entry(suite, "ps-0")["addr"], job_id)
        assert restarted is not None and survivor is not None
        # Both shards stepped through the same synchronous steps; the restarted one lost the
        # updates since its newest checkpoint on disk (one interval, plus the ~0.1 s a snapshot
        # waits to be written), the survivor none.
        assert restarted.clock == survivor.clock > killed_at
        assert survivor.lost_steps == 0
        assert 0 <= restarted.lost_steps <= 2 * CHECKPOINT_EVERY_STEPS  # 0: killed just after one
        assert restarted.version == restarted.clock - restarted.lost_steps
        print(
            f"\n[shard recovery] killed ps-1 at step {killed_at}; it restored its checkpoint and lost "
            f"{restarted.lost_steps} of {restarted.clock} synchronous steps "
            f"(checkpoint every {CHECKPOINT_EVERY_STEPS} updates); test accuracy "
            f"{job.eval_metrics['accuracy']:.3f}"
        )
        log_text = (root / "run" / "logs" / "ps-1.log").read_text(errors="replace")
        assert "checkpoint loaded" in log_text
        # The coordinator's manifest names one checkpoint per shard, all of the same step.
        manifest = json.loads((root / "work" / "manifests" / f"{job_id}.json").read_text())
        assert manifest["consistent"] and manifest["consistency"] == "sync"
        assert manifest["step"] % CHECKPOINT_EVERY_STEPS == 0
        assert [s["clock"] for s in manifest["shards"]] == [manifest["step"]] * 2
        assert all(Path(s["path"]).is_file() for s in manifest["shards"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, tail(log)
    finally:
        stop(proc)
        leftovers = wait_gone(str(root), timeout=20)
    assert leftovers == [], leftovers
    assert "ps-1: restarted" in log.read_text()
