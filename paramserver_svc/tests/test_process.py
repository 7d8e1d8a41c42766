"""`python -m paramserver_svc` as a real process: health, metrics, restarts, checkpoints, speed."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlmesh import tensor
from mlmesh.channels import sync_channel
from mlmesh.paramserver.v1 import paramserver_pb2 as pb
from mlmesh.paramserver.v1 import paramserver_pb2_grpc
from mlmesh.types.v1 import tensor_pb2 as pb_tensor

from paramserver_svc.tests.conftest import REPO, ShardProcess, child_env, rows_slice, stop_process, var

F32 = np.float32
# The shapes of a small Fashion-MNIST CNN: ~225k float32 parameters (~0.9 MB).
CNN = {
    "conv1/kernel": (3, 3, 1, 32),
    "conv1/bias": (32,),
    "conv2/kernel": (3, 3, 32, 64),
    "conv2/bias": (64,),
    "dense1/kernel": (1600, 128),
    "dense1/bias": (128,),
    "dense2/kernel": (128, 10),
    "dense2/bias": (10,),
}


def stub_for(sp: ShardProcess) -> tuple[grpc.Channel, paramserver_pb2_grpc.ParameterServerServiceStub]:
    ch = sync_channel(sp.addr)
    return ch, paramserver_pb2_grpc.ParameterServerServiceStub(ch)


def register_small_job(stub, optimizer: str = "adam", job_id: str = "job-1") -> None:
    stub.RegisterVariables(
        pb.RegisterVariablesRequest(
            job_id=job_id,
            variables=[
                var("w", [4, 3], kind="glorot_uniform", seed=11),
                var("emb", [10, 2], row_sharded=True, kind="random_normal", scale=0.1, seed=5),
            ],
            optimizer=pb.OptimizerSpec(kind=optimizer, learning_rate=0.05),
        ),
        timeout=10,
    )


def push_step(stub, step: int, worker: str = "w0") -> pb.PushResponse:
    rng = np.random.default_rng(step)
    req = pb.PushRequest(
        job_id="job-1",
        worker_id=worker,
        step=step,
        row_grads=[rows_slice("emb", [1, 7, 7], rng.normal(size=(3, 2)).astype(F32))],
    )
    req.dense_grads["w"].CopyFrom(tensor.to_proto(rng.normal(size=(4, 3)).astype(F32)))
    return stub.Push(req, timeout=10)


def pull_all(stub) -> tuple[int, np.ndarray, np.ndarray]:
    resp = stub.Pull(
        pb.PullRequest(job_id="job-1", dense=["w"], rows=[pb.RowSlice(name="emb", rows=list(range(10)))]),
        timeout=10,
    )
    return resp.version, tensor.from_proto(resp.dense["w"]), tensor.from_proto(resp.rows[0].values)


@pytest.mark.integration
def test_process_serves_health_and_metrics(shard_processes, tmp_path: Path) -> None:
    sp = shard_processes(0, 1, tmp_path / "ckpt")
    ch, stub = stub_for(sp)
    try:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "mlmesh.paramserver.v1.ParameterServerService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        register_small_job(stub)
        assert push_step(stub, 0).applied
        assert not push_step(stub, 0).applied
        with pytest.raises(grpc.RpcError) as err:
            stub.Pull(pb.PullRequest(job_id="job-1", dense=["nope"]), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        info = stub.GetShardInfo(pb.GetShardInfoRequest(), timeout=5)
        assert {v.name for v in info.variables} == {"w", "emb"}
    finally:
        ch.close()
    text = urllib.request.urlopen(f"http://127.0.0.1:{sp.metrics_port}/metrics", timeout=5).read().decode()
    assert 'mlmesh_ps_pushes_total{result="applied"} 1.0' in text
    assert 'mlmesh_ps_pushes_total{result="duplicate"} 1.0' in text
    assert "mlmesh_ps_variables 2.0" in text
    assert "mlmesh_ps_apply_seconds_count 1.0" in text


@pytest.mark.faults
def test_kill_9_then_restart_resumes_from_the_last_checkpoint(shard_processes, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    first = shard_processes(0, 1, ckpt)
    ch, stub = stub_for(first)
    try:
        register_small_job(stub)
        for step in range(3):
            assert push_step(stub, step).applied
        saved = stub.SaveCheckpoint(pb.SaveCheckpointRequest(job_id="job-1"), timeout=10)
        assert saved.version == 3 and Path(saved.path).parent == ckpt
        at_save = pull_all(stub)
        assert push_step(stub, 3).applied  # after the checkpoint: lost with the process
        after_step_3 = pull_all(stub)
    finally:
        ch.close()
    assert stop_process(first, signal.SIGKILL) == -signal.SIGKILL

    second = shard_processes(0, 1, ckpt)
    ch, stub = stub_for(second)
    try:
        version, w, emb = pull_all(stub)
        assert version == at_save[0] == 3
        np.testing.assert_array_equal(w, at_save[1])
        np.testing.assert_array_equal(emb, at_save[2])
        assert not push_step(stub, 2).applied  # the worker clocks came back too
        register_small_job(stub)  # idempotent: the job continues where it was
        assert push_step(stub, 3).applied
        # Adam's slots and step counts came back too: step 3 lands exactly where it did before the kill
        version, w, emb = pull_all(stub)
        assert version == after_step_3[0] == 4
        np.testing.assert_array_equal(w, after_step_3[1])
        np.testing.assert_array_equal(emb, after_step_3[2])
    finally:
        ch.close()


@pytest.mark.faults
def test_sigterm_writes_a_final_checkpoint(shard_processes, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    first = shard_processes(0, 1, ckpt)
    ch, stub = stub_for(first)
    try:
        register_small_job(stub, optimizer="adagrad")
        for step in range(2):
            push_step(stub, step)
        before = pull_all(stub)
    finally:
        ch.close()
    assert stop_process(first, signal.SIGTERM) == 0
    second = shard_processes(0, 1, ckpt)
    ch, stub = stub_for(second)
    try:
        after = pull_all(stub)
        assert after[0] == before[0] == 2
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[2], before[2])
    finally:
        ch.close()


@pytest.mark.faults
def test_periodic_checkpoint_survives_kill_9(shard_processes, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    first = shard_processes(0, 1, ckpt, "--checkpoint-every-seconds", "0.2")
    ch, stub = stub_for(first)
    try:
        register_small_job(stub, optimizer="sgd")
        push_step(stub, 0)
        expected = pull_all(stub)
        deadline = time.monotonic() + 10
        while not list(ckpt.glob("job-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # at least one full period after the push
    finally:
        ch.close()
    stop_process(first, signal.SIGKILL)
    second = shard_processes(0, 1, ckpt)
    ch, stub = stub_for(second)
    try:
        got = pull_all(stub)
        assert got[0] == 1
        np.testing.assert_array_equal(got[1], expected[1])
    finally:
        ch.close()


@pytest.mark.faults
def test_unreadable_checkpoint_stops_the_shard_with_a_message(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "job-broken.0000000001.npz").write_bytes(b"garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "paramserver_svc", "--shard-index", "0", "--num-shards", "1",
         "--checkpoint-dir", str(ckpt), "--port", "0", "--metrics-port", "-1"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "job-broken.0000000001.npz" in proc.stderr and "unreadable" in proc.stderr


@pytest.mark.faults
@pytest.mark.parametrize("damage", ["truncated", "another job"])
def test_bad_newest_checkpoint_is_refused_and_the_previous_one_resumes(
    shard_processes, tmp_path: Path, damage: str
) -> None:
    ckpt = tmp_path / "ckpt"
    first = shard_processes(0, 1, ckpt)
    ch, stub = stub_for(first)
    try:
        register_small_job(stub, optimizer="sgd")
        push_step(stub, 0)
        good = stub.SaveCheckpoint(pb.SaveCheckpointRequest(job_id="job-1"), timeout=10)
        at_good = pull_all(stub)
        push_step(stub, 1)
        newest = Path(stub.SaveCheckpoint(pb.SaveCheckpointRequest(job_id="job-1"), timeout=10).path)
        register_small_job(stub, optimizer="sgd", job_id="job-2")
        other = Path(stub.SaveCheckpoint(pb.SaveCheckpointRequest(job_id="job-2"), timeout=10).path)
    finally:
        ch.close()
    stop_process(first, signal.SIGKILL)
    assert newest != Path(good.path) and Path(good.path).exists()  # the previous one is kept
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        newest.write_bytes(other.read_bytes())
    second = shard_processes(0, 1, ckpt)
    ch, stub = stub_for(second)
    try:
        version, w, _ = pull_all(stub)
        assert version == at_good[0] == 1
        np.testing.assert_array_equal(w, at_good[1])
    finally:
        ch.close()
    log = second.log_text()
    assert "checkpoint refused" in log and newest.name in log
    assert ("unreadable" if damage == "truncated" else "holds job 'job-2'") in log


@pytest.mark.faults
def test_bad_settings_exit_2_naming_the_setting(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "paramserver_svc", "--shard-index", "3", "--num-shards", "2"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--shard-index" in proc.stderr and "must be below num_shards 2" in proc.stderr


@pytest.mark.faults
def test_oversized_push_is_resource_exhausted(shard_processes, tmp_path: Path) -> None:
    sp = shard_processes(0, 1, tmp_path / "ckpt", "--max-message-bytes", "65536")
    ch, stub = stub_for(sp)
    try:
        stub.RegisterVariables(
            pb.RegisterVariablesRequest(
                job_id="j",
                variables=[var("w", [100_000])],
                optimizer=pb.OptimizerSpec(kind="sgd", learning_rate=1),
            ),
            timeout=10,
        )
        req = pb.PushRequest(job_id="j", worker_id="w", step=0)
        req.dense_grads["w"].CopyFrom(tensor.to_proto(np.ones(100_000, F32)))
        with pytest.raises(grpc.RpcError) as err:
            stub.Push(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        ch.close()


@pytest.mark.integration
def test_pull_and_push_of_a_small_cnn_take_milliseconds(shard_processes, tmp_path: Path) -> None:
    sp = shard_processes(0, 1, tmp_path / "ckpt")
    ch, stub = stub_for(sp)
    try:
        stub.RegisterVariables(
            pb.RegisterVariablesRequest(
                job_id="perf",
                variables=[var(n, list(s), kind="glorot_uniform", seed=1) for n, s in CNN.items()],
                optimizer=pb.OptimizerSpec(kind="adam", learning_rate=0.001),
            ),
            timeout=10,
        )
        n_params = sum(int(np.prod(s)) for s in CNN.values())
        grads = {n: tensor.to_proto(np.full(s, 1e-3, F32)) for n, s in CNN.items()}
        pull_req = pb.PullRequest(job_id="perf", dense=list(CNN))
        pulls, pushes = [], []
        for step in range(40):
            t0 = time.perf_counter()
            resp = stub.Pull(pull_req, timeout=10)
            t1 = time.perf_counter()
            stub.Push(pb.PushRequest(job_id="perf", worker_id="w", step=step, dense_grads=grads), timeout=10)
            t2 = time.perf_counter()
            if step >= 5:  # after warm-up
                pulls.append(t1 - t0)
                pushes.append(t2 - t1)
        assert sum(len(t.content) for t in resp.dense.values()) == 4 * n_params
        pull_ms, push_ms = statistics.median(pulls) * 1e3, statistics.median(pushes) * 1e3
        print(
            f"\n{n_params} float32 params: pull median {pull_ms:.2f} ms, push (adam) median {push_ms:.2f} ms"
        )
        # Generous bound for 2 shared cores; the measured numbers are printed above.
        assert pull_ms + push_ms < 60
    finally:
        ch.close()


@pytest.mark.faults
def test_push_stream_above_max_stream_bytes_is_resource_exhausted(shard_processes, tmp_path: Path) -> None:
    sp = shard_processes(0, 1, tmp_path / "ckpt", "--max-stream-bytes", "65536")
    ch, stub = stub_for(sp)
    try:
        stub.RegisterVariables(
            pb.RegisterVariablesRequest(
                job_id="j",
                variables=[var("w", [100_000])],
                optimizer=pb.OptimizerSpec(kind="sgd", learning_rate=1),
            ),
            timeout=10,
        )
        head = pb.PushRequest(job_id="j", worker_id="w", step=0)
        head.dense_grads["w"].CopyFrom(tensor.header(np.ones(100_000, F32)))
        messages = [pb.PushChunk(header=head)] + [
            pb.PushChunk(data=p) for p in tensor.chunks([np.ones(100_000, F32)])
        ]
        with pytest.raises(grpc.RpcError) as err:
            stub.PushStream(iter(messages), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "need 400000 bytes; at most 65536 allowed" in err.value.details()
    finally:
        ch.close()


@pytest.mark.faults
def test_register_stream_above_max_stream_bytes_is_resource_exhausted(
    shard_processes, tmp_path: Path
) -> None:
    """Refused from the header alone: no buffer for the claimed bytes is ever allocated."""
    sp = shard_processes(0, 1, tmp_path / "ckpt", "--max-stream-bytes", "65536")
    ch, stub = stub_for(sp)
    try:
        v = var("emb", [1 << 20, 1 << 10], row_sharded=True, kind="value")
        v.initializer.value.CopyFrom(
            pb_tensor.Tensor(dtype=tensor.DType.DTYPE_FLOAT32, shape=[1 << 20, 1 << 10])
        )
        head = pb.RegisterVariablesRequest(
            job_id="j", variables=[v], optimizer=pb.OptimizerSpec(kind="sgd", learning_rate=1)
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.RegisterVariablesStream(
                iter([pb.RegisterChunk(header=head), pb.RegisterChunk(data=b"x")]), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"need {4 << 30} bytes; at most 65536 allowed" in err.value.details()
        assert not stub.GetShardInfo(pb.GetShardInfoRequest(), timeout=10).variables
    finally:
        ch.close()
