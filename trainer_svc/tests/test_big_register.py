"""A job whose embedding slice per shard is several times the shards' gRPC message limit
(--max-message-bytes 4 MiB): the coordinator registers it through RegisterVariablesStream,
and the job trains, evaluates and exports like any other. Real processes throughout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlmesh import keys
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.paramserver.v1 import paramserver_pb2
from mlmesh.tensor import dtype_code, to_proto
from mlmesh.trainer.v1 import trainer_pb2

from trainer_svc.tests.cluster import Cluster, start_cluster, wait_dropped, wait_job

pytestmark = pytest.mark.integration

LIMIT = 4 * 1024 * 1024
ROWS, DIM = 131_072, 64  # float32: 32 MiB in all, ~16 MiB (4x the limit) on each of 2 shards
SCHEMA = ingest_pb2.DatasetSchema(
    features=[
        ingest_pb2.FeatureSpec(name="ids", dtype=dtype_code("int64"), shape=[]),
        ingest_pb2.FeatureSpec(name="x", dtype=dtype_code("float32"), shape=[2]),
        ingest_pb2.FeatureSpec(name="y", dtype=dtype_code("float32"), shape=[]),
    ]
)


@pytest.fixture
def small_message_cluster(tmp_path: Path) -> Iterator[Cluster]:
    flags = ["--max-message-bytes", str(LIMIT)]
    c = start_cluster(tmp_path, shard_flags=flags, coordinator_flags=flags, workers=("w0",))
    try:
        yield c
    finally:
        c.stop()


def test_an_embedding_larger_than_a_message_registers_by_stream_and_trains(
    small_message_cluster: Cluster,
) -> None:
    c = small_message_cluster
    rng = np.random.default_rng(0)
    n = 512
    ids = rng.integers(0, ROWS, size=n).astype(np.int64)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    table = {"ids": ids, "x": x, "y": (x[:, 0] - x[:, 1]).astype(np.float32)}
    ingest = c.ingest_stub()
    ingest.CreateDataset(ingest_pb2.CreateDatasetRequest(name="big", schema=SCHEMA), timeout=30)
    batch = ingest_pb2.RecordBatch(features={k: to_proto(v) for k, v in table.items()})
    ingest.Append(iter([ingest_pb2.AppendRequest(dataset="big", batch=batch)]), timeout=60)

    spec = trainer_pb2.JobSpec(
        model="trainer_svc.tests.models:big_embedding",
        model_args={"rows": str(ROWS), "dim": str(DIM)},
        train_dataset="big",
        eval_dataset="big",
        epochs=2,
        batch_size=64,
        optimizer=paramserver_pb2.OptimizerSpec(kind="sgd", learning_rate=0.05),
        model_name="big",
        seed=1,
    )
    trainer = c.trainer()
    trainer.CreateJob(trainer_pb2.CreateJobRequest(spec=spec, job_id="big-1"), timeout=120)
    job = wait_job(trainer, "big-1", timeout=240)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.examples == 2 * n
    # Each shard's slice of the table is several times what one message may carry.
    for i in range(2):
        assert keys.local_rows(ROWS, i, 2) * DIM * 4 > 3.5 * LIMIT
    # Released after its final export: the shards wrote a final checkpoint and freed the table.
    for i in range(2):
        info = wait_dropped(c.shard_stub(i), "big-1")
        assert not [v for v in info.variables if v.job_id == "big-1"]
        assert any(p.name.endswith(".npz") for p in (c.work / f"shard{i}").iterdir())
    # The worker, whose last calls may come after the release, carries on.
    assert c.workers["w0"].popen.poll() is None
    import tensorflow as tf

    # The export holds the whole trained table, pulled back in requests under the limit.
    ckpt = str(Path(job.export_path) / "variables" / "variables")
    [name] = [n for n, shape in tf.train.list_variables(ckpt) if shape == [ROWS, DIM]]
    assert np.isfinite(tf.train.load_variable(ckpt, name)).all()
    assert np.isfinite(job.eval_metrics["loss"])
