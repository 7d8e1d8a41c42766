"""The trainer against real ingest and parameter-server processes: jobs are
validated against real datasets, train with two workers, are evaluated and
exported as SavedModels that load and predict."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from mlmesh import keys
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.paramserver.v1 import paramserver_pb2
from mlmesh.tensor import to_proto
from mlmesh.trainer.v1 import trainer_pb2

from trainer_svc.tests import procs
from trainer_svc.tests.cluster import (
    FASHION_SCHEMA,
    FASHION_TRAIN,
    Cluster,
    fashion_spec,
    finished_job_info,
    metric,
    wait_job,
)

pytestmark = pytest.mark.integration


def create(c: Cluster, spec: trainer_pb2.JobSpec, job_id: str = "") -> trainer_pb2.JobStatus:
    return c.trainer().CreateJob(trainer_pb2.CreateJobRequest(spec=spec, job_id=job_id), timeout=120).job


def status_of(c: Cluster, spec: trainer_pb2.JobSpec) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        create(c, spec)
    return e.value.code(), e.value.details()


def test_fashion_job_trains_evaluates_and_exports(cluster: Cluster) -> None:
    trainer = cluster.trainer()
    job = create(cluster, fashion_spec(epochs=1), "fashion-1")
    assert job.state in (trainer_pb2.JOB_STATE_PENDING, trainer_pb2.JOB_STATE_RUNNING)
    job = wait_job(trainer, "fashion-1")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    partitions = (
        cluster.ingest_stub()
        .ListPartitions(ingest_pb2.ListPartitionsRequest(dataset=FASHION_TRAIN))
        .partitions
    )
    assert len(partitions) > 2  # enough tasks for both workers
    assert job.tasks_completed == job.tasks_total == len(partitions)  # one epoch: one task per partition
    # Every record once; one step per batch of 16 within a partition.
    assert job.examples == 3000
    assert job.steps == sum(-(-p.num_records // 16) for p in partitions)
    assert 0 < job.loss < 2.3 and job.examples_per_second > 0 and job.train_seconds > 0
    assert job.eval_metrics["accuracy"] > 0.5, dict(job.eval_metrics)
    assert 0 < job.eval_metrics["loss"] < 2.0

    # The export: <repo>/fashion-mnist/<version>/, no temp dir left, loads and predicts.
    export = cluster.repo / "fashion-mnist" / str(job.model_version)
    assert job.export_path == str(export) and (export / "saved_model.pb").exists()
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".tmp-")]
    import tensorflow as tf

    signature = tf.saved_model.load(job.export_path).signatures["serving_default"]
    test = procs.load_fashion("test", 500)
    probs = signature(image=tf.constant(test["image"].astype(np.float32)))["probabilities"].numpy()
    assert probs.shape == (500, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    assert (probs.argmax(axis=1) == test["label"]).mean() > 0.5

    # The 800 KiB dense kernel is partitioned in blocks of rows over both shards; every
    # other variable is whole on exactly one shard (read from the final checkpoints: the
    # finished job was released on the shards).
    whole: list[str] = []
    for i in range(2):
        finished_job_info(cluster.shard_stub(i), "fashion-1")
        info = cluster.shard_stub(i).GetShardInfo(paramserver_pb2.GetShardInfoRequest(), timeout=10)
        held = [v for v in info.variables if v.job_id == "fashion-1"]
        assert [v.name for v in held if v.row_sharded] == ["dense/kernel"]
        whole += [v.name for v in held if not v.row_sharded]
        [kernel] = [v for v in held if v.row_sharded]
        assert list(kernel.shape) == [1600, 128] and kernel.local_rows == 800
        assert kernel.row_layout == paramserver_pb2.ROW_LAYOUT_BLOCKS
    assert len(whole) == len(set(whole)) == 7
    steps = sum(metric(w, "mlmesh_trainer_worker_steps_total") for w in cluster.workers.values())
    assert steps >= 100


def test_user_model_with_sparse_embedding_trains_from_the_example(cluster: Cluster) -> None:
    from examples.tabular.train import job_spec, train

    assert cluster.coordinator is not None
    job = train(cluster.channel(cluster.coordinator.addr), job_spec("churn", epochs=3), timeout=150)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    # 35% churn: always answering "stays" would score 0.65.
    assert job.eval_metrics["accuracy"] > 0.72, dict(job.eval_metrics)
    assert job.eval_metrics["auc"] > 0.75, dict(job.eval_metrics)
    # The finished job is released on the shards (DropJob after the final export); its final
    # checkpoint stays, and LoadCheckpoint brings it back.
    for i in range(2):
        finished_job_info(cluster.shard_stub(i), job.job_id)
    # The embedding is row-sharded by hash: each shard holds its rows of the 50 regions.
    for i in range(2):
        info = cluster.shard_stub(i).GetShardInfo(paramserver_pb2.GetShardInfoRequest(), timeout=10)
        [emb] = [
            v for v in info.variables if v.job_id == job.job_id and v.name == "region_embedding/embeddings"
        ]
        assert emb.row_sharded and list(emb.shape) == [50, 8] and emb.local_rows == keys.local_rows(50, i, 2)
    import tensorflow as tf

    signature = tf.saved_model.load(job.export_path).signatures["serving_default"]
    customers = np.array([[2, 110, 6, 10, 30, 4], [100, 30, 0, 10, 60, 0]], dtype=np.float32)
    out = signature(numeric=tf.constant(customers), region=tf.constant([0, 0], dtype=tf.int64))
    out = out["churn_probability"].numpy()
    assert out[0, 0] > out[1, 0]  # a new, pricey, complaining, late payer churns more than a loyal one


def test_jobs_run_one_at_a_time_and_a_pending_job_can_be_cancelled(cluster: Cluster) -> None:
    trainer = cluster.trainer()
    first = create(cluster, fashion_spec(epochs=1, model_name="fashion-queue"), "queue-first")
    second = create(cluster, fashion_spec(epochs=1, model_name="fashion-queue", seed=2), "queue-second")
    wait_job(trainer, "queue-first", {trainer_pb2.JOB_STATE_RUNNING, *range(3, 8)})
    second = trainer.GetJob(trainer_pb2.GetJobRequest(job_id="queue-second")).job
    assert second.state == trainer_pb2.JOB_STATE_PENDING
    cancelled = trainer.CancelJob(trainer_pb2.CancelJobRequest(job_id="queue-second")).job
    assert cancelled.state == trainer_pb2.JOB_STATE_CANCELLED
    first = wait_job(trainer, "queue-first")
    assert first.state == trainer_pb2.JOB_STATE_SUCCEEDED, first.error
    time.sleep(0.5)  # a few monitor ticks: the cancelled job must not start
    second = trainer.GetJob(trainer_pb2.GetJobRequest(job_id="queue-second")).job
    assert second.state == trainer_pb2.JOB_STATE_CANCELLED and second.steps == 0 and second.tasks_total == 0
    assert [p.name for p in (cluster.repo / "fashion-queue").iterdir()] == [str(first.model_version)]


def test_job_ids_are_idempotent_per_spec(cluster: Cluster) -> None:
    spec = fashion_spec(epochs=1, model_name="fashion-idem")
    first = create(cluster, spec, "idem")
    again = create(cluster, spec, "idem")
    assert again.job_id == "idem" and again.created_unix == first.created_unix
    code, details = status_of_id(cluster, fashion_spec(epochs=2, model_name="fashion-idem"), "idem")
    assert (
        code == grpc.StatusCode.ALREADY_EXISTS
        and "job 'idem' already exists with a different spec" in details
    )
    cluster.trainer().CancelJob(trainer_pb2.CancelJobRequest(job_id="idem"))
    wait_job(cluster.trainer(), "idem")


def status_of_id(c: Cluster, spec: trainer_pb2.JobSpec, job_id: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        create(c, spec, job_id)
    return e.value.code(), e.value.details()


def test_specs_are_checked_against_the_real_datasets(cluster: Cluster) -> None:
    code, details = status_of(cluster, fashion_spec(train_dataset="no-such-data"))
    assert code == grpc.StatusCode.NOT_FOUND and "train_dataset 'no-such-data' does not exist" in details
    code, details = status_of(cluster, fashion_spec(eval_dataset="no-such-eval"))
    assert code == grpc.StatusCode.NOT_FOUND and "eval_dataset 'no-such-eval' does not exist" in details
    code, details = status_of(cluster, fashion_spec(train_dataset="churn-train"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "has no feature 'image'" in details
    cluster.ingest_stub().CreateDataset(
        ingest_pb2.CreateDatasetRequest(name="empty-fashion", schema=FASHION_SCHEMA)
    )
    code, details = status_of(cluster, fashion_spec(train_dataset="empty-fashion"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "has no records yet" in details


def test_a_continuous_job_takes_in_data_that_arrives_and_exports_a_version_per_epoch(
    cluster: Cluster,
) -> None:
    """A dataset grows while a --continuous job trains: the partitions appended during
    epoch 0 join a later epoch, and every epoch ends in a new model version."""
    from trainer_svc.tests.cluster import upload

    stub = cluster.ingest_stub()
    data = procs.load_fashion("train", 2000)
    first = {k: v[:1000] for k, v in data.items()}
    upload(stub, "growing", first)  # 256 KiB partitions: 4 of them
    before = len(stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset="growing")).partitions)
    spec = fashion_spec(epochs=3, train_dataset="growing", model_name="growing", continuous=True)
    create(cluster, spec, "growing-1")
    trainer = cluster.trainer()
    wait_job(trainer, "growing-1", states={trainer_pb2.JOB_STATE_RUNNING}, timeout=120)
    # More data arrives while epoch 0 trains.
    more = {k: v[1000:] for k, v in data.items()}
    reqs = [
        ingest_pb2.AppendRequest(
            dataset="growing",
            batch=ingest_pb2.RecordBatch(features={k: to_proto(v) for k, v in more.items()}),
        )
    ]
    stub.Append(iter(reqs), timeout=60)
    after = len(stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset="growing")).partitions)
    assert after > before
    job = wait_job(trainer, "growing-1", timeout=240)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.epochs_completed == 3
    assert job.epochs_exported == 3  # the last version has seen every epoch
    # Epoch 0 had the first partitions only; the last epoch all of them.
    assert before * 3 < job.tasks_total <= before + 2 * after
    assert job.examples > 3 * 1000
    versions = sorted(int(p.name) for p in (cluster.repo / "growing").iterdir() if p.name.isdigit())
    # A version per epoch while training, the last at the end. Exports run one at a time
    # and snapshot the newest parameters, so epochs that end during one export share the
    # next version (seen under load): 2 or 3 versions, numbered from 1 without gaps.
    assert versions in ([1, 2], [1, 2, 3])
    assert job.model_version == versions[-1] and job.eval_metrics["accuracy"] > 0.3
