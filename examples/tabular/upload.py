"""Create the churn datasets in ingest_svc and append the table to them:

    python -m examples.tabular.upload --ingest-addr 127.0.0.1:PORT --npz churn.npz

The last `--test-fraction` of the rows goes to "<name>-test", the rest to
"<name>-train". Re-running with the same data appends it again (ingest
datasets only grow); use a new --name for a fresh copy.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from mlmesh.channels import sync_channel
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.tensor import dtype_code, to_proto

from examples.tabular.data import LABEL, NUMERIC, REGION

SCHEMA = ingest_pb2.DatasetSchema(
    features=[
        ingest_pb2.FeatureSpec(name=NUMERIC, dtype=dtype_code("float32"), shape=[6]),
        ingest_pb2.FeatureSpec(name=REGION, dtype=dtype_code("int64"), shape=[]),
        ingest_pb2.FeatureSpec(name=LABEL, dtype=dtype_code("int64"), shape=[]),
    ]
)


def append_requests(
    dataset: str, table: dict[str, np.ndarray], rows_per_message: int = 4096
) -> Iterator[ingest_pb2.AppendRequest]:
    n = len(table[LABEL])
    for start in range(0, n, rows_per_message):
        batch = ingest_pb2.RecordBatch(
            features={name: to_proto(col[start : start + rows_per_message]) for name, col in table.items()}
        )
        yield ingest_pb2.AppendRequest(dataset=dataset, batch=batch)


def upload(
    channel: grpc.Channel,
    table: dict[str, np.ndarray],
    name: str = "churn",
    test_fraction: float = 0.2,
    max_partition_bytes: int = 64 * 1024,
) -> dict[str, int]:
    """Create "<name>-train" and "<name>-test" (idempotent) and append the rows; returns rows per dataset."""
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    n = len(table[LABEL])
    cut = n - int(n * test_fraction)
    parts = {
        f"{name}-train": {k: v[:cut] for k, v in table.items()},
        f"{name}-test": {k: v[cut:] for k, v in table.items()},
    }
    out = {}
    for dataset, rows in parts.items():
        stub.CreateDataset(
            ingest_pb2.CreateDatasetRequest(
                name=dataset, schema=SCHEMA, max_partition_bytes=max_partition_bytes
            ),
            timeout=30,
        )
        resp = stub.Append(append_requests(dataset, rows), timeout=300)
        out[dataset] = resp.records_appended
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ingest-addr", required=True)
    parser.add_argument("--npz", type=Path, required=True)
    parser.add_argument("--name", default="churn")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    args = parser.parse_args()
    with np.load(args.npz) as data:
        table = {k: data[k] for k in (NUMERIC, REGION, LABEL)}
    with sync_channel(args.ingest_addr) as channel:
        for dataset, count in upload(channel, table, args.name, args.test_fraction).items():
            print(f"{dataset}: appended {count} records")


if __name__ == "__main__":
    main()
