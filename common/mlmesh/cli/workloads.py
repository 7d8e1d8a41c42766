"""Named workloads for `mlmesh train --workload NAME`: a model, its datasets, tuned
training defaults, and how to ingest its data when ingest does not hold it yet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlmesh.cli.common import console, rpc_errors
from mlmesh.cli.ingest import (
    MOVIELENS_TEST,
    MOVIELENS_TRAIN,
    IngestResult,
    ingest_fashion_mnist,
    ingest_movielens,
    report,
)
from mlmesh.clients import IngestClient


@dataclass(frozen=True)
class Workload:
    """Defaults a `train --workload` run uses for every option the user did not give."""

    name: str
    model: str
    train_dataset: str
    eval_dataset: str
    model_name: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    # ingest address -> what was ingested; called only when a dataset is missing or empty.
    ingest: Callable[[str], list[IngestResult]]

    def option_defaults(self) -> dict[str, object]:
        """By the `train` command's parameter names."""
        return {
            "model": self.model,
            "train_dataset": self.train_dataset,
            "eval_dataset": self.eval_dataset,
            "model_name": self.model_name,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "lr": self.lr,
        }


WORKLOADS: dict[str, Workload] = {
    # Tuned through the real suite (2 shards, 2 async workers, lazy Adam on the
    # shards): test RMSE ~0.91 after 5 epochs; see README "MovieLens-100k".
    "movielens": Workload(
        name="movielens",
        model="mlmesh.models.movielens_mf:build",
        train_dataset=MOVIELENS_TRAIN,
        eval_dataset=MOVIELENS_TEST,
        model_name="movielens",
        epochs=5,
        batch_size=1024,
        optimizer="adam",
        lr=1e-2,
        ingest=lambda addr: ingest_movielens(addr),
    ),
    "fashion-mnist": Workload(
        name="fashion-mnist",
        model="mlmesh.models.fashion_cnn:build",
        train_dataset="fashion-mnist-train",
        eval_dataset="fashion-mnist-test",
        model_name="fashion-mnist",
        epochs=5,
        batch_size=64,
        optimizer="adam",
        lr=1e-3,
        ingest=lambda addr: ingest_fashion_mnist(addr, None, None),
    ),
}


def ensure_ingested(workload: Workload, addr: str) -> list[IngestResult]:
    """Ingest the workload's data unless both its datasets already hold records.

    Idempotent: a dataset that holds records is left as it is.
    """
    names = [n for n in (workload.train_dataset, workload.eval_dataset) if n]
    with IngestClient(addr) as client, rpc_errors(f"ingest at {addr}"):
        held = {name: client.get_dataset(name) for name in names}
    if all(ds is not None and ds.num_records > 0 for ds in held.values()):
        for name, ds in held.items():
            assert ds is not None
            console.print(f"{name}: {ds.num_records:,} records already in ingest")
        return []
    results = workload.ingest(addr)
    for result in results:
        report(result)
    return results
