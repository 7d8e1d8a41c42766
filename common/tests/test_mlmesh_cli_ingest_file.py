"""`mlmesh ingest file` and IngestClient.append with mlmesh.sources, against a real ingest_svc."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import structlog
from mlmesh import sources
from mlmesh.cli.main import app
from mlmesh.clients import IngestClient
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.tensor import from_proto
from mlmesh_testutil import popen, wait_for_file
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def ingest_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("ingest")
    port_file = tmp / "ingest.json"
    args = ["-m", "ingest_svc", "--data-dir", str(tmp / "data"), "--port-file", str(port_file)]
    proc = popen([*args, "--log-format", "json"], tmp / "ingest.log")
    try:
        wait_for_file(port_file, timeout=30)
        yield f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def ingest(addr: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["ingest", "file", *args, "--ingest-addr", addr])
    return result.exit_code, result.output


def dataset(addr: str, name: str) -> ingest_pb2.Dataset | None:
    with IngestClient(addr) as client:
        return client.get_dataset(name)


def read(addr: str, name: str) -> dict[str, np.ndarray]:
    """Every record of a dataset, in partition order."""
    cols: dict[str, list[np.ndarray]] = {}
    with IngestClient(addr) as client:
        parts = client.stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset=name)).partitions
        for p in parts:
            req = ingest_pb2.ReadPartitionRequest(dataset=name, partition_id=p.partition_id)
            for resp in client.stub.ReadPartition(req):
                for k, t in resp.batch.features.items():
                    cols.setdefault(k, []).append(from_proto(t, k))
    return {k: np.concatenate(v) for k, v in cols.items()}


def appended_files(state: Path) -> dict[str, int]:
    try:
        return json.loads(state.read_text()).get("files", {})
    except FileNotFoundError:
        return {}


def write_csv(path: Path, start: int, n: int, header: bool = True) -> None:
    with open(path, "a") as f:
        if header:
            f.write("t,x[0],x[1]\n")
        f.writelines(f"{i},{i * 0.5},{-i}\n" for i in range(start, start + n))


# -- one file ------------------------------------------------------------------------


def test_csv_file_is_ingested_with_the_schema_its_header_declares(tmp_path: Path, ingest_addr: str) -> None:
    path = tmp_path / "r.csv"
    write_csv(path, 0, 500)
    code, out = ingest(ingest_addr, str(path), "--dataset", "csv-once")
    assert code == 0, out
    assert "schema from the file: t: int64[], x: float64[2]" in out and "appended 500 records" in out
    assert read(ingest_addr, "csv-once")["t"].tolist() == list(range(500))
    code, out = ingest(ingest_addr, str(path), "--dataset", "csv-once")
    assert code == 0 and "left as is" in out


def test_parquet_file_with_a_schema_file_is_cast_to_it(tmp_path: Path, ingest_addr: str) -> None:
    path, schema = tmp_path / "r.parquet", tmp_path / "schema.json"
    pq.write_table(pa.table({"y": np.arange(300, dtype=np.int32), "note": ["n"] * 300}), path)
    schema.write_text(json.dumps([{"name": "y", "dtype": "int64", "shape": []}]))
    code, out = ingest(ingest_addr, str(path), "--dataset", "pq", "--schema", str(schema))
    assert code == 0, out
    d = dataset(ingest_addr, "pq")
    assert d is not None and d.num_records == 300 and [f.name for f in d.schema.features] == ["y"]


def test_malformed_csv_row_fails_with_its_line_and_nothing_is_kept(tmp_path: Path, ingest_addr: str) -> None:
    path = tmp_path / "bad.csv"
    write_csv(path, 0, 3000)
    with open(path, "a") as f:
        f.write("1,2\n")  # line 3002
    # Small partitions: several were written to temp files before the bad line was read.
    args = [str(path), "--dataset", "bad-csv", "--max-partition-bytes", "4096"]
    code, out = ingest(ingest_addr, *args, "--columns", "t:int64,x:float32[2]")
    assert code == 1
    assert "bad.csv:3002: malformed CSV: 2 fields but the header has 3" in out
    d = dataset(ingest_addr, "bad-csv")
    assert d is not None and (d.num_records, d.num_partitions) == (0, 0)


def test_value_that_does_not_fit_the_declared_dtype_names_line_record_and_column(
    tmp_path: Path, ingest_addr: str
) -> None:
    path = tmp_path / "r.csv"
    path.write_text("t,x\n1,2\n2,300\n")
    code, out = ingest(ingest_addr, str(path), "--dataset", "narrow", "--columns", "t:int64,x:uint8")
    assert code == 1 and "r.csv:3 (record 1): column 'x': '300' is not a valid uint8" in out
    assert dataset(ingest_addr, "narrow").num_records == 0  # type: ignore[union-attr]


# -- the client library --------------------------------------------------------------


def test_records_iterable_appends_through_the_client(ingest_addr: str) -> None:
    src = sources.RecordSource({"id": i, "v": [float(i), 1.0]} for i in range(1000))
    with IngestClient(ingest_addr) as client:
        client.create_dataset("recs", src.schema)
        resp = client.append("recs", src.batches())
    assert resp.records_appended == 1000
    assert read(ingest_addr, "recs")["id"].tolist() == list(range(1000))


def test_client_refuses_a_bad_record_before_sending_and_the_stream_keeps_nothing(ingest_addr: str) -> None:
    with IngestClient(ingest_addr) as client:
        client.create_dataset(
            "strict", sources.Schema.parse("id:int64,v:float32[2]"), max_partition_bytes=4096
        )

        def batches() -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, 2000, 100):  # partitions of 256 records are written meanwhile
                yield {"id": np.arange(start, start + 100), "v": np.zeros((100, 2), np.float32)}
            yield {"id": np.array([1.5]), "v": np.zeros((1, 2), np.float32)}

        with pytest.raises(sources.SchemaError, match=r"column 'id', records from 2000: dtype float64"):
            client.append("strict", batches())
        d = client.get_dataset("strict")
    assert d is not None and (d.num_records, d.num_partitions) == (0, 0)


def test_append_to_an_unknown_dataset_is_not_found(ingest_addr: str) -> None:
    with IngestClient(ingest_addr) as client, pytest.raises(grpc.RpcError) as info:
        client.append("no-such-dataset", [{"x": np.zeros(3)}])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert "'no-such-dataset' not found" in info.value.details()  # type: ignore[attr-defined]


# -- following a growing source ------------------------------------------------------------


def test_directory_files_are_each_appended_once_across_runs(tmp_path: Path, ingest_addr: str) -> None:
    src, state = tmp_path / "in", tmp_path / "state.json"
    src.mkdir()
    np.savez(src / "001.npz", t=np.arange(0, 100), x=np.zeros((100, 2)))
    write_csv(src / "002.csv", 100, 50)
    (src / ".003.csv").write_text("half written")
    (src / "004.csv.tmp").write_text("half written")
    args = [str(src), "--dataset", "dir", "--state-file", str(state), "--columns", "t:int64,x:float64[2]"]
    code, out = ingest(ingest_addr, *args)
    assert code == 0, out
    assert dataset(ingest_addr, "dir").num_records == 150  # type: ignore[union-attr]
    np.save(src / "005.npy", np.zeros(3))  # refused below: an .npy is one column, the schema has two
    write_csv(src / "003.csv", 150, 25)
    code, out = ingest(ingest_addr, *args, "--follow", "--max-polls", "1")
    assert code == 1 and "005.npy: an .npy file is one column" in out
    assert "appended 25 records from 003.csv" in out
    (src / "005.npy").unlink()
    code, out = ingest(ingest_addr, *args, "--follow", "--max-polls", "2", "--poll-seconds", "0.05")
    assert code == 0 and "0 records appended" in out
    assert read(ingest_addr, "dir")["t"].tolist() == list(range(175))
    assert sorted(json.loads(state.read_text())["files"]) == ["001.npz", "002.csv", "003.csv"]


def test_growing_csv_appends_only_new_complete_lines(tmp_path: Path, ingest_addr: str) -> None:
    path, state = tmp_path / "grow.csv", tmp_path / "state.json"
    write_csv(path, 0, 10)
    with open(path, "a") as f:
        f.write("10,5.0")  # a line still being written
    args = [str(path), "--dataset", "grow", "--follow", "--max-polls", "1", "--state-file", str(state)]
    code, out = ingest(ingest_addr, *args)
    assert code == 0, out
    assert dataset(ingest_addr, "grow").num_records == 10  # type: ignore[union-attr]
    with open(path, "a") as f:
        f.write(",-10\n")
    write_csv(path, 11, 5, header=False)
    code, out = ingest(ingest_addr, *args)
    assert code == 0 and "appended 6 records from grow.csv from line 12" in out
    code, out = ingest(ingest_addr, *args)
    assert code == 0 and "0 records appended" in out
    assert read(ingest_addr, "grow")["t"].tolist() == list(range(16))
    # A replaced file is not silently re-read from some offset (even when the inode is reused).
    path.unlink()
    write_csv(path, 100, 30)
    code, out = ingest(ingest_addr, *args)
    assert code == 1 and "was replaced" in out


def test_state_of_another_dataset_is_refused(tmp_path: Path, ingest_addr: str) -> None:
    src, state = tmp_path / "in", tmp_path / "state.json"
    src.mkdir()
    write_csv(src / "a.csv", 0, 5)
    assert ingest(ingest_addr, str(src), "--dataset", "st-a", "--state-file", str(state))[0] == 0
    data = json.loads(state.read_text())
    data["dataset_created_unix"] -= 100  # as if written against another data dir
    state.write_text(json.dumps(data))
    code, out = ingest(ingest_addr, str(src), "--dataset", "st-a", "--state-file", str(state))
    assert code == 1 and "was written for dataset 'st-a' created at" in out


def test_follow_process_appends_files_as_they_appear_and_stops_cleanly_on_sigint(
    tmp_path: Path, ingest_addr: str
) -> None:
    src, state = tmp_path / "in", tmp_path / "state.json"
    src.mkdir()
    write_csv(src / "000.csv", 0, 10)
    log = tmp_path / "follow.log"
    args = ["-m", "mlmesh.cli.main", "ingest", "file", str(src), "--dataset", "live", "--follow"]
    args += ["--poll-seconds", "0.1", "--state-file", str(state), "--ingest-addr", ingest_addr]
    proc = popen(args, log)
    try:
        for i in range(1, 4):
            tmp = src / f".{i:03d}.csv"
            write_csv(tmp, i * 10, 10)
            tmp.rename(src / f"{i:03d}.csv")  # the producer's rename: never read half written
            deadline = time.monotonic() + 20
            while len(appended_files(state)) < i + 1:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "40 records appended" in log.read_text()
    assert read(ingest_addr, "live")["t"].tolist() == list(range(40))


def test_until_idle_bounds_a_follow_run(tmp_path: Path, ingest_addr: str) -> None:
    path = tmp_path / "idle.csv"
    write_csv(path, 0, 3)
    started = time.monotonic()
    args = [str(path), "--dataset", "idle", "--follow", "--poll-seconds", "0.05", "--until-idle", "0.3"]
    code, out = ingest(ingest_addr, *args, "--state-file", str(tmp_path / "s.json"))
    assert code == 0 and "3 records appended" in out
    assert time.monotonic() - started < 10
