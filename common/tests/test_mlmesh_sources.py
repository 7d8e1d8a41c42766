"""mlmesh.sources: files and iterables as checked column batches (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlmesh import sources
from mlmesh.sources import Schema, SchemaError

pytestmark = pytest.mark.unit


def concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# -- schemas ---------------------------------------------------------------------


def test_schema_parses_from_columns_spec_and_json() -> None:
    s = Schema.parse("x:float32[3,4], y:int64,flag:bool[]")
    assert [(c.name, c.dtype, c.shape) for c in s.columns] == [
        ("x", "float32", (3, 4)),
        ("y", "int64", ()),
        ("flag", "bool", ()),
    ]
    assert (
        Schema.from_json({"columns": s.to_json()})
        == s
        == Schema.from_json(json.loads(json.dumps(s.to_json())))
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x:complex64", "column 'x' has dtype complex64"),
        ("x", "is not NAME:DTYPE"),
        ("x:int64,x:int64", "column 'x' appears more than once"),
        ("1x:int64", "invalid column name '1x'"),
    ],
)
def test_bad_schema_spec_is_named(spec: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        Schema.parse(spec)


def test_conform_casts_only_what_loses_nothing() -> None:
    s = Schema.parse("a:int64,b:float32,c:uint8")
    out = s.conform({"a": np.arange(3, dtype=np.int32), "b": np.arange(3), "c": np.array([0, 7, 255])})
    assert [out[k].dtype.name for k in "abc"] == ["int64", "float32", "uint8"]
    with pytest.raises(SchemaError, match=r"column 'c', record 12: value \[256\] does not fit uint8"):
        s.conform({"a": np.arange(3), "b": np.zeros(3), "c": np.array([1, 256, 3])}, first_record=11)
    with pytest.raises(
        SchemaError, match=r"column 'a', records from 0: dtype float64 .* \(floats are not cast\)"
    ):
        s.conform({"a": np.zeros(3), "b": np.zeros(3), "c": np.zeros(3, np.uint8)})


# -- CSV -------------------------------------------------------------------------


def test_csv_header_declares_the_schema_and_indexed_fields_become_a_shape(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("t,x[0],x[1],y\n1,0.5,1.5,3\n2,2,3,4\n\n3,4,5,6")  # a blank line; no final newline
    src = sources.open_file(path)
    assert src.schema == Schema.parse("t:int64,x:float64[2],y:int64")
    out = concat(list(src.batches()))
    np.testing.assert_array_equal(out["x"], [[0.5, 1.5], [2, 3], [4, 5]])
    assert out["t"].tolist() == [1, 2, 3]


def test_csv_declared_schema_picks_fields_and_reads_packed_values(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("when,x,label\n2024-01-01,1 2 3 4,0\n2024-01-02,5 6 7 8,1\n")
    src = sources.open_file(path, Schema.parse("x:float32[2,2],label:uint8"))
    out = concat(list(src.batches()))
    assert out["x"].dtype == np.float32 and out["x"].shape == (2, 2, 2)
    assert out["label"].tolist() == [0, 1]


def test_csv_is_read_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(1000)))
    batches = list(sources.open_file(path).batches(target_bytes=16 * 100))  # 100 records per batch
    assert [len(b["a"]) for b in batches] == [100] * 10
    assert concat(batches)["b"].tolist() == [i * 2 for i in range(1000)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1,2\n3,4,5\n", r"a.csv:3: malformed CSV: 3 fields but the header has 2"),
        ('1,2\n"3,4\n', r"a.csv:3: malformed CSV: a quoted field runs past the end of the line"),
        ("1,2\n3,x\n", r"a.csv:3 \(record 1\): column 'b': 'x' is not a valid float32"),
        ("1,2\n3,\n", r"a.csv:3 \(record 1\): column 'b': an empty field is not a valid float32"),
        ("1.5,2\n", r"a.csv:2 \(record 0\): column 'a': '1.5' is not a valid int64"),
    ],
)
def test_csv_bad_row_names_the_line_before_any_batch_of_it_is_returned(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a,b\n" + body)
    with pytest.raises(SchemaError, match=message):
        list(sources.open_file(path, Schema.parse("a:int64,b:float32")).batches())


def test_csv_missing_field_for_a_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(SchemaError, match=r"a.csv:1: the header has no field 'c' for column 'c'"):
        sources.open_file(path, Schema.parse("a:int64,c:int64"))


def test_csv_non_number_without_schema_asks_for_one(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a,name\n1,bob\n")
    with pytest.raises(
        SchemaError, match=r"a.csv:2: field 'name' holds 'bob', not a number; declare a schema"
    ):
        sources.open_file(path)


def test_csv_from_an_offset_reads_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a\n1\n2\n3")  # the last line is still being written
    src = sources.CsvSource(path, complete_lines_only=True)
    assert concat(list(src.batches()))["a"].tolist() == [1, 2]
    assert (src.position, src.line, src.records) == (6, 4, 2)
    with open(path, "a") as f:
        f.write("0\n4\n")
    nxt = sources.CsvSource(
        path, start=src.position, start_line=src.line, first_record=src.records, complete_lines_only=True
    )
    assert concat(list(nxt.batches()))["a"].tolist() == [30, 4]
    assert nxt.position == path.stat().st_size and nxt.records == 4


# -- Parquet ---------------------------------------------------------------------


def test_parquet_fixed_size_lists_become_shapes_and_batches_stream(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    x = np.arange(2000 * 6, dtype=np.float32).reshape(2000, 6)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 3)
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(inner, 2), "y": np.arange(2000)})
    pq.write_table(table, path, row_group_size=500)
    src = sources.open_file(path)
    assert src.schema == Schema.parse("x:float32[2,3],y:int64") and src.total == 2000
    batches = list(src.batches(target_bytes=32 * 100))
    assert len(batches) > 10
    out = concat(batches)
    np.testing.assert_array_equal(out["x"], x.reshape(2000, 2, 3))
    assert out["y"].tolist() == list(range(2000))


def test_parquet_variable_lists_need_the_declared_length(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"x": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0]]), "s": ["a", "b", "c"]}), path)
    with pytest.raises(SchemaError, match="column 'x' is a variable-length list; declare its shape"):
        sources.open_file(path)
    src = sources.open_file(path, Schema.parse("x:float32[2]"))  # column s is skipped
    with pytest.raises(
        SchemaError, match=r"column 'x', record 2: a list of 1 values .* expects float32\[2\]"
    ):
        list(src.batches())


def test_parquet_nulls_and_strings_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"y": pa.array([1, None, 3]), "s": ["a", "b", "c"]}), path)
    with pytest.raises(SchemaError, match="column 'y', record 1: is null"):
        list(sources.open_file(path, Schema.parse("y:int64")).batches())
    with pytest.raises(SchemaError, match="column 's' has type string, which cannot be ingested"):
        sources.open_file(path)
    with pytest.raises(SchemaError, match=r"has no column\(s\) \['z'\]"):
        sources.open_file(path, Schema.parse("z:int64"))


# -- NumPy -----------------------------------------------------------------------


def test_npy_is_one_column_read_in_slices(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(600, dtype=np.float32).reshape(100, 6))
    src = sources.open_file(path)
    assert src.schema == Schema.parse("x:float32[6]") and src.total == 100
    batches = list(src.batches(target_bytes=24 * 10))
    assert [len(b["x"]) for b in batches] == [10] * 10
    named = sources.open_file(path, Schema.parse("features:float64[6]"))
    assert next(iter(named.batches()))["features"].dtype == np.float64


def test_npz_members_stream_and_a_schema_may_pick_some(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    img = np.arange(50 * 4, dtype=np.uint8).reshape(50, 2, 2)
    np.savez_compressed(path, img=img, y=np.arange(50), extra=np.zeros(50))
    src = sources.open_file(path, Schema.parse("img:uint8[2,2],y:int32"))
    batches = list(src.batches(target_bytes=8 * 10))  # 10 records of 4 + 4 bytes
    assert len(batches) == 5
    out = concat(batches)
    np.testing.assert_array_equal(out["img"], img)
    assert out["y"].dtype == np.int32


def test_npz_with_unequal_counts_or_objects_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", a=np.zeros(3), b=np.zeros(4))
    with pytest.raises(SchemaError, match="arrays have different record counts"):
        sources.open_file(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", a=np.array([{}, {}], dtype=object))
    with pytest.raises(SchemaError, match="array 'a' holds Python objects"):
        sources.open_file(tmp_path / "b.npz")


def test_unknown_suffix_is_named(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"unknown format '\.txt'"):
        sources.open_file(tmp_path / "a.txt")


# -- Python iterables ------------------------------------------------------------------


def test_records_are_batched_and_the_first_declares_the_schema() -> None:
    src = sources.RecordSource({"id": i, "v": [float(i), 0.5]} for i in range(250))
    assert src.schema == Schema.parse("id:int64,v:float64[2]")
    batches = list(src.batches(target_bytes=24 * 100))
    assert [len(b["id"]) for b in batches] == [100, 100, 50]
    assert concat(batches)["v"][7].tolist() == [7.0, 0.5]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"id": 1}, r"record 3: missing column\(s\) \['v'\]"),
        ({"id": 1, "v": [1.0, 2.0], "w": 0}, r"record 3: unknown column\(s\) \['w'\]"),
        ({"id": 1.5, "v": [1.0, 2.0]}, r"column 'id', records from 3: dtype float64 .* not cast"),
        ({"id": 1, "v": [1.0]}, r"column 'v', record 3: shape \[1\] but the schema expects \[2\]"),
        ({"id": "one", "v": [1.0, 2.0]}, r"column 'id', record 3: value 'one' is not a number"),
    ],
)
def test_a_record_that_does_not_fit_is_named_by_column_and_index(bad: dict, message: str) -> None:
    records = [{"id": i, "v": [0.0, 1.0]} for i in range(3)] + [bad]
    with pytest.raises(SchemaError, match=message):
        list(sources.RecordSource(records, Schema.parse("id:int64,v:float32[2]")).batches())


def test_column_batches_pass_through_checked() -> None:
    good = {"a": np.arange(3), "b": np.zeros((3, 2))}
    src = sources.ColumnBatchSource([good, {"a": np.arange(2), "b": np.zeros((2, 3))}])
    it = src.batches()
    assert next(it)["a"].tolist() == [0, 1, 2]
    with pytest.raises(SchemaError, match=r"column 'b', records from 3: shape \[2, 3\] .* \[n,2\]"):
        next(it)
