"""CreateDataset, GetDataset, ListDatasets through a real channel."""

from __future__ import annotations

import grpc
import pytest
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.tensor import dtype_code

from ingest_svc.tests.conftest import MNIST_SCHEMA, create_mnist, rpc_error

pytestmark = pytest.mark.unit


def feature(
    name: str, dtype: int = dtype_code("float32"), shape: tuple[int, ...] = ()
) -> ingest_pb2.FeatureSpec:
    return ingest_pb2.FeatureSpec(name=name, dtype=dtype, shape=list(shape))


def create(stub, name: str = "ds", features=None, max_partition_bytes: int = 0):
    schema = ingest_pb2.DatasetSchema(features=features) if features is not None else MNIST_SCHEMA
    return stub.CreateDataset(
        ingest_pb2.CreateDatasetRequest(name=name, schema=schema, max_partition_bytes=max_partition_bytes),
        timeout=30,
    )


def test_create_returns_empty_dataset_with_server_default_partition_bound(stub) -> None:
    resp = create_mnist(stub, "fashion-mnist-train")
    assert resp.created
    d = resp.dataset
    assert (d.name, d.num_records, d.num_partitions, d.num_bytes) == ("fashion-mnist-train", 0, 0, 0)
    assert d.max_partition_bytes == 8 * 1024 * 1024
    assert list(d.schema.features) == list(MNIST_SCHEMA.features)
    assert d.created_unix > 0


def test_create_again_with_same_schema_is_idempotent(stub) -> None:
    first = create_mnist(stub, "a", max_partition_bytes=65536)
    again = create_mnist(stub, "a")  # 0 = "whatever it has"
    assert not again.created
    assert again.dataset == first.dataset
    assert not create_mnist(stub, "a", max_partition_bytes=65536).created


def test_create_again_with_other_schema_is_already_exists(stub) -> None:
    create_mnist(stub, "a")
    err = rpc_error(
        stub.CreateDataset,
        ingest_pb2.CreateDatasetRequest(name="a", schema=ingest_pb2.DatasetSchema(features=[feature("x")])),
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "'a' already exists" in err.details() and "x: float32[]" in err.details()


def test_create_again_with_other_partition_bound_is_already_exists(stub) -> None:
    create_mnist(stub, "a", max_partition_bytes=65536)
    err = rpc_error(
        stub.CreateDataset,
        ingest_pb2.CreateDatasetRequest(name="a", schema=MNIST_SCHEMA, max_partition_bytes=131072),
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "65536" in err.details() and "131072" in err.details()


@pytest.mark.parametrize("name", ["", "Upper", ".hidden", "-dash", "a/b", "a b", "x" * 129, "ü"])
def test_create_with_invalid_name_is_invalid_argument(stub, name: str) -> None:
    err = rpc_error(stub.CreateDataset, ingest_pb2.CreateDatasetRequest(name=name, schema=MNIST_SCHEMA))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid dataset name" in err.details()


@pytest.mark.parametrize(
    ("features", "expect"),
    [
        ([], "no features"),
        ([feature("x"), feature("x")], "'x' appears more than once"),
        ([feature("")], "invalid feature name ''"),
        ([feature("1abc")], "invalid feature name '1abc'"),
        ([feature("a b")], "invalid feature name 'a b'"),
        ([feature("x", dtype=0)], "'x' has unknown dtype 0"),
        ([feature("x", dtype=99)], "'x' has unknown dtype 99"),
        ([feature("x", shape=(3, -1))], "negative dimension in shape [3, -1]"),
        ([feature("x", shape=(1,) * 33)], "33 dimensions"),
    ],
)
def test_create_with_invalid_schema_is_invalid_argument(stub, features, expect: str) -> None:
    err = rpc_error(
        stub.CreateDataset,
        ingest_pb2.CreateDatasetRequest(name="ds", schema=ingest_pb2.DatasetSchema(features=features)),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expect in err.details()


@pytest.mark.parametrize("limit", [-1, 4095, 1024**3 + 1])
def test_create_with_out_of_range_partition_bound_is_invalid_argument(stub, limit: int) -> None:
    err = rpc_error(
        stub.CreateDataset,
        ingest_pb2.CreateDatasetRequest(name="ds", schema=MNIST_SCHEMA, max_partition_bytes=limit),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"max_partition_bytes is {limit}" in err.details()


def test_zero_sized_dimension_is_a_valid_schema(stub) -> None:
    assert create(
        stub, "empty-dims", [feature("x", shape=(0, 3)), feature("y", dtype=dtype_code("bool"))]
    ).created


def test_get_returns_created_dataset(stub) -> None:
    created = create_mnist(stub, "a").dataset
    assert stub.GetDataset(ingest_pb2.GetDatasetRequest(name="a"), timeout=30).dataset == created


def test_get_unknown_dataset_is_not_found(stub) -> None:
    err = rpc_error(stub.GetDataset, ingest_pb2.GetDatasetRequest(name="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope' not found" in err.details()


def test_get_with_invalid_name_is_invalid_argument(stub) -> None:
    assert rpc_error(stub.GetDataset, ingest_pb2.GetDatasetRequest(name="")).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_list_returns_datasets_sorted_by_name(stub) -> None:
    assert list(stub.ListDatasets(ingest_pb2.ListDatasetsRequest(), timeout=30).datasets) == []
    for name in ["b", "a", "c"]:
        create_mnist(stub, name)
    names = [d.name for d in stub.ListDatasets(ingest_pb2.ListDatasetsRequest(), timeout=30).datasets]
    assert names == ["a", "b", "c"]
