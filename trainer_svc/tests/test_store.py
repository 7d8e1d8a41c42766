"""Job records: durable JSON, progress accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_svc.core.jobs import Job, JobState
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.store import JobStore

pytestmark = pytest.mark.unit

SPEC = JobSpec(
    model="m:build", train_dataset="d", epochs=1, batch_size=8, model_name="m", model_args={"a": "1"}
)


def test_job_survives_a_store_reopen_field_for_field(tmp_path: Path) -> None:
    job = Job("job-1", SPEC, state=JobState.SUCCEEDED, steps=10, examples=80, loss=0.5, tasks_total=3)
    job.eval_metrics = {"accuracy": 0.9, "loss": 0.3}
    job.export_path, job.model_version, job.train_seconds = "/r/m/2", 2, 12.5
    JobStore(tmp_path).save(job)
    [back] = JobStore(tmp_path).load_all()
    assert back.to_dict() == job.to_dict()
    assert back.state is JobState.SUCCEEDED


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = Job("job-1", SPEC)
    store.save(job)
    job.state = JobState.RUNNING
    store.save(job)
    assert [p.name for p in store.dir.iterdir()] == ["job-1.json"]
    assert store.load_all()[0].state is JobState.RUNNING


def test_unreadable_record_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.save(Job("good", SPEC))
    (store.dir / "torn.json").write_text('{"job_id": "torn", "spe')
    assert [j.job_id for j in store.load_all()] == ["good"]


def test_records_load_oldest_first(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.save(Job("b", SPEC, created_unix=2.0))
    store.save(Job("a", SPEC, created_unix=3.0))
    store.save(Job("c", SPEC, created_unix=1.0))
    assert [j.job_id for j in store.load_all()] == ["c", "b", "a"]


def test_loss_is_the_step_weighted_mean_of_recent_reports() -> None:
    job = Job("j", SPEC, started_unix=100.0)
    job.record_progress(101.0, steps=10, examples=80, loss_sum=20.0)  # mean 2.0
    job.record_progress(102.0, steps=30, examples=240, loss_sum=30.0)  # mean 1.0
    assert job.steps == 40 and job.examples == 320
    assert job.loss == pytest.approx(50.0 / 40)
    # An empty report (a liveness ping) changes neither loss nor counts.
    job.record_progress(103.0, steps=0, examples=0, loss_sum=0.0)
    assert job.loss == pytest.approx(50.0 / 40) and job.steps == 40


def test_rate_is_examples_over_the_recent_window() -> None:
    job = Job("j", SPEC, started_unix=100.0)
    job.record_progress(102.0, steps=1, examples=200, loss_sum=1.0)
    assert job.examples_per_second == pytest.approx(100.0)  # 200 examples in 2 s since start
    job.record_progress(200.0, steps=1, examples=300, loss_sum=1.0)
    # The window is the last 30 s: only the 300 examples reported at t=200 count.
    assert job.examples_per_second == pytest.approx(10.0)
