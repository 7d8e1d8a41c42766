"""Ingest and the work queue against tf.data service, a plain gRPC stream and np.save.

    python benchmarks/ingest.py --json benchmarks/results/ingest.json [--quick]
    python benchmarks/ingest.py --only append          # one group: append, read_stream, ...

Every server, reader and peer is its own process on loopback (ephemeral ports), torn down at
the end. Cases (value and baseline measured in the same run, medians over repetitions):

- `append`: MB/s of one `IngestClient.append` stream (what `mlmesh ingest` does: ~1 MiB
  batches framed by hand, 8 MiB partitions written and fsynced as they fill, committed at the
  end) vs `np.save` + fsync of the same arrays in the same client process (files kept, one
  directory per repetition, as ingest keeps its partitions). Two diagnostic rows, not goals,
  say where Append's time goes: the same bytes, in messages of Append's size, uploaded with
  one client-streaming call to a minimal `grpc.aio` server that discards them
  (`append_diag_upload_discarded`: the gRPC transport's ceiling) or writes them to one file as
  they arrive and fsyncs it (`append_diag_upload_to_file`: a plain upload server). The four
  run in one order, then in the reverse order in the next repetition. A third diagnostic,
  `append_diag_client_keeps_blocks`, is the same append from a second client process that
  keeps large malloc blocks (the services do; `mlmesh ingest` does not): with glibc's
  defaults every 1 MiB message's pages go back to the kernel and fault in again.
- `read_stream`: MB/s of ReadPartition streaming every partition of the float dataset to one
  reader (one call per partition, messages decoded to arrays) vs a plain `grpc.aio` file
  server streaming the same bytes from the tf.data side's 32 raw files of that dataset (one
  call per file, each message a `read` of the same size from the page cache, as a plain file
  server would; nothing decoded, nothing checksummed).
- `cached_epoch`: a trainer worker's partition loads (`load_partition`: the worker's cache,
  else ingest) over the float dataset, epoch 2 time / epoch 1 time. Goal <= 0.2.
- `vs_tf_data_service`: records/s delivered to 2 consumers from a ~500 MB dataset of
  Fashion-MNIST-sized float records (784 float32 + int64 label), batch 256: mlmesh (each
  consumer a `mlmesh.feed.PartitionFeed` over the work queue) vs tf.data service (1
  dispatcher + 2 workers, `ShardingPolicy.DYNAMIC`, `compression=None`) over the same records
  as raw files. Both sides check every record arrived exactly once.
- `worker_kill_lost_records`: the same pass with one consumer killed (SIGKILL) after ~25 %
  of the records: records never delivered to any consumer (goal 0), and whether the pass
  finished without a restart by hand. Each consumer logs the ids it received as it goes.
- The earlier table (Fashion-MNIST uint8 records, batch 1024): 1 and 2 readers, 5 epochs in
  one job and 1 epoch as a new job, vs tf.data service with a 50 ms client task refresh
  (its public default of 1 s makes every job end ~1 s late), plus a local tf.data floor.
  Every mlmesh read goes through ingest's ReadPartition (no consumer-side cache).

Every consumer process (both systems) and the plain stream's server keep large malloc blocks
(`mlmesh.memory.keep_large_blocks`), as every mlmesh service and trainer worker does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
    Case,
    Child,
    Children,
    base_parser,
    install_signal_handlers,
    machine_line,
    median,
    print_table,
    reps_of,
    role_argv,
    scratch_dir,
    serve_commands,
    service_argv,
    wait_for_quiet,
    write_json,
)

BENCHMARK = "ingest"
SCRIPT = "ingest.py"
FASHION = "fashion"  # uint8[28,28] image + int64 label: 792 bytes a record
FLOAT = "floats"  # float32[784] + int64 label: 3,144 bytes a record
FILES = 32  # partitions on the mlmesh side, files on the tf.data side
TASK_REFRESH_MS = 50
PASS_TIMEOUT = 600.0
KILL_LEASE_SECONDS = 5.0
GROUPS = ("append", "read_stream", "cached_epoch", "consumers")  # --only


# --- data ---------------------------------------------------------------------------------


def fashion_records(limit: int) -> tuple[dict[str, np.ndarray], str]:
    try:
        from mlmesh.data.fashion_mnist import load_fashion_mnist

        images, labels = load_fashion_mnist("train", limit=limit, allow_download=False)
        return {"x": np.ascontiguousarray(images), "label": labels.astype(np.int64)}, "Fashion-MNIST train"
    except Exception as e:  # no Debian package here: same shapes, synthetic values
        print(f"Fashion-MNIST not available ({e}); using synthetic records", file=sys.stderr)
        rng = np.random.default_rng(0)
        return {
            "x": rng.integers(0, 256, size=(limit, 28, 28), dtype=np.uint8),
            "label": rng.integers(0, 10, size=limit, dtype=np.int64),
        }, "synthetic uint8[28,28] + int64 label"


def float_records(n: int) -> dict[str, np.ndarray]:
    """Fashion-MNIST-sized float records; the label is the record's id, so a consumer's
    log of labels says exactly which records it got."""
    rng = np.random.default_rng(1)
    return {"x": rng.random((n, 784), dtype=np.float32), "label": np.arange(n, dtype=np.int64)}


def record_bytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a[0].nbytes for a in arrays.values())


def write_record_files(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """FILES raw files of fixed-length records (x bytes, then the little-endian int64 label)."""
    directory.mkdir(parents=True, exist_ok=True)
    x, labels = arrays["x"], arrays["label"]
    n = len(labels)
    xb = x.reshape(n, -1).view(np.uint8)
    rows = np.empty((n, xb.shape[1] + 8), dtype=np.uint8)
    rows[:, : xb.shape[1]] = xb
    rows[:, xb.shape[1] :] = labels.astype("<i8").view(np.uint8).reshape(n, 8)
    for i, chunk in enumerate(np.array_split(rows, FILES)):
        chunk.tofile(directory / f"records-{i:02d}.bin")
    np.save(directory / "x.npy", x)
    np.save(directory / "label.npy", labels)


def ingest(addr: str, name: str, arrays: dict[str, np.ndarray]) -> int:
    from mlmesh.cli.ingest import ingest_arrays, partition_bytes_for
    from mlmesh.clients import IngestClient

    n = len(arrays["label"])
    with IngestClient(addr, timeout=600) as client:
        result = ingest_arrays(
            client, name, arrays, max_partition_bytes=partition_bytes_for(n, record_bytes(arrays), FILES)
        )
        return result.partitions


def enqueue_epochs(addr: str, dataset: str, job_id: str, epochs: int) -> None:
    from mlmesh.clients import IngestClient
    from mlmesh.ingest.v1 import ingest_pb2

    with IngestClient(addr) as client:
        for epoch in range(epochs):
            req = ingest_pb2.EnqueueEpochRequest(
                job_id=job_id, dataset=dataset, epoch=epoch, shuffle=True, seed=epoch
            )
            client.stub.EnqueueEpoch(req, timeout=30)


# --- roles (child processes) --------------------------------------------------------------


def role_tf_dispatcher(args: argparse.Namespace) -> None:
    import tensorflow as tf
    from mlmesh.server import write_port_file

    server = tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=0, protocol="grpc")
    )
    port = int(server.target.rsplit(":", 1)[1])
    write_port_file(Path(args.port_file), {"port": port, "pid": os.getpid(), "host": LOOPBACK})
    server.join()


def role_tf_worker(args: argparse.Namespace) -> None:
    import tensorflow as tf
    from mlmesh.server import write_port_file

    server = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(
            dispatcher_address=args.dispatcher, worker_address="127.0.0.1:%port%", port=0, protocol="grpc"
        )
    )
    write_port_file(Path(args.port_file), {"port": 0, "pid": os.getpid()})
    server.join()


class IdLog:
    """The labels (record ids) a consumer received, appended as it goes, so a consumer
    killed mid-pass still tells what it got."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "ab") if path else None  # noqa: SIM115

    def add(self, labels: np.ndarray) -> None:
        if self._f is not None:
            self._f.write(np.ascontiguousarray(labels, dtype="<i8").tobytes())
            self._f.flush()  # in the kernel: survives SIGKILL of this process

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def role_reader(args: argparse.Namespace) -> None:
    """One pass per {"cmd": "read", "job", "epochs", ...}; answers records, label sum, start
    and end (monotonic). With "ids", appends every label it receives to that file."""
    from mlmesh.memory import keep_large_blocks

    # As a trainer worker process does (mlmesh.server.run_service), for every system alike:
    # with glibc's defaults each received MiB-sized buffer is a fresh mmap that faults in.
    keep_large_blocks()
    batch = args.batch
    if args.system == "mlmesh":
        from mlmesh.feed import IDLE, PartitionFeed

        from trainer_svc.clients import CallPolicy, IngestClient

        loop = asyncio.new_event_loop()
        client = loop.run_until_complete(_async(lambda: IngestClient(args.addr, CallPolicy(timeout=60))))

        async def consume(msg: dict[str, Any]) -> dict[str, Any]:
            n = total = partitions = 0
            ids = IdLog(msg.get("ids", ""))
            completing: list[asyncio.Task[Any]] = []
            start = time.monotonic()
            feed: PartitionFeed[dict[str, np.ndarray]] = PartitionFeed(
                client,
                msg["job"],
                args.name,
                load=lambda t: client.read_partition(t.dataset, t.partition_id, t.num_records),
                depth=args.depth,
                lease_seconds=msg.get("lease_seconds", 60.0),
                poll_seconds=0.02,
            )
            async with feed:
                async for item in feed:
                    if item is IDLE:
                        continue
                    cols = item.data
                    for lo in range(0, item.task.num_records, batch):
                        labels = cols["label"][lo : lo + batch]
                        n += len(labels)
                        total += int(labels.sum())
                        ids.add(labels)
                    completing.append(asyncio.create_task(feed.complete(item)))  # off the path
                    partitions += 1
                await asyncio.gather(*completing)
            ids.close()
            return {
                "records": n,
                "label_sum": total,
                "start": start,
                "end": time.monotonic(),
                "units": partitions,
            }

        serve_commands(lambda msg: loop.run_until_complete(consume(msg)))
        return

    import tensorflow as tf
    from tensorflow.python.data.experimental.ops import data_service_ops as dso

    width = 0
    if args.system == "local":
        x = np.load(Path(args.data_dir) / "x.npy")
        labels_all = np.load(Path(args.data_dir) / "label.npy")
        local = tf.data.Dataset.from_tensor_slices((x, labels_all)).batch(batch).prefetch(tf.data.AUTOTUNE)

        def make(job: str, epochs: int, refresh_ms: int | None = None) -> Any:
            return local.repeat(epochs)

    else:
        files = sorted(str(p) for p in Path(args.data_dir).glob("records-*.bin"))
        width = args.record_bytes - 8

        def decode(raw: Any) -> tuple[Any, Any]:
            b = tf.io.decode_raw(raw, tf.uint8)  # [n, record_bytes]
            x = (
                b[:, :width]
                if args.x_dtype == "uint8"
                else tf.bitcast(tf.reshape(b[:, :width], [-1, width // 4, 4]), tf.float32)
            )
            return x, tf.bitcast(tf.reshape(b[:, width:], [-1, 8]), tf.int64)

        def make(job: str, epochs: int, refresh_ms: int | None = None) -> Any:
            ds = tf.data.FixedLengthRecordDataset(files, args.record_bytes).batch(batch).map(decode)
            ds = ds.repeat(epochs)
            options: dict[str, Any] = {
                "processing_mode": tf.data.experimental.service.ShardingPolicy.DYNAMIC,
                "service": args.addr,
                "job_name": job,
                "compression": None,
            }
            if refresh_ms is None:
                return ds.apply(tf.data.experimental.service.distribute(**options))
            # The public distribute() leaves the client's task refresh at 1 s; the private twin
            # takes the hint. The peer gets the faster setting.
            return ds.apply(dso._distribute(task_refresh_interval_hint_ms=refresh_ms, **options))

    def read(msg: dict[str, Any]) -> dict[str, Any]:
        n = total = batches = 0
        ids = IdLog(msg.get("ids", ""))
        start = time.monotonic()
        for x, label in make(msg["job"], msg["epochs"], msg.get("refresh_ms")):
            x.numpy()
            lbl = label.numpy()
            n += len(lbl)
            total += int(lbl.sum())
            ids.add(lbl)
            batches += 1
        ids.close()
        return {"records": n, "label_sum": total, "start": start, "end": time.monotonic(), "units": batches}

    serve_commands(read)


async def _async(fn: Any) -> Any:
    return fn()


def role_plain_server(args: argparse.Namespace) -> None:
    """A plain grpc.aio file server: Stream("path,size") yields the file at `path` in messages
    of `size` bytes, each read from the file (the page cache) into a fresh `bytes`."""
    import grpc
    from mlmesh.memory import keep_large_blocks
    from mlmesh.server import write_port_file

    keep_large_blocks()

    async def stream(request: bytes, context: Any) -> Any:
        path, size = request.decode().rsplit(",", 1)
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(int(size)):  # one copy, as ingest copies a batch out of its mmap
                yield chunk

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
        handler = grpc.method_handlers_generic_handler(
            "plain.Bytes", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port(f"{LOOPBACK}:0")
        await server.start()
        write_port_file(Path(args.port_file), {"port": port, "pid": os.getpid()})
        await server.wait_for_termination()

    asyncio.run(main())


def role_stream_reader(args: argparse.Namespace) -> None:
    """{"cmd": "ingest", "dataset", "partitions"} streams every partition with ReadPartition
    (decoded); {"cmd": "plain", "paths", "size"} reads each file through the plain server.
    Answers bytes, seconds."""
    import grpc
    from mlmesh import records
    from mlmesh.channels import aio_channel
    from mlmesh.ingest.v1 import ingest_pb2
    from mlmesh.memory import keep_large_blocks

    keep_large_blocks()
    loop = asyncio.new_event_loop()

    async def ingest_pass(msg: dict[str, Any]) -> dict[str, Any]:
        channel = aio_channel(args.addr, 64 << 20)
        call = channel.unary_stream(
            "/mlmesh.ingest.v1.IngestService/ReadPartition",
            request_serializer=ingest_pb2.ReadPartitionRequest.SerializeToString,
            response_deserializer=None,
        )
        nbytes = messages = 0
        sizes: list[int] = []
        t0 = time.perf_counter()
        for pid in range(msg["partitions"]):
            req = ingest_pb2.ReadPartitionRequest(dataset=msg["dataset"], partition_id=pid)
            async for m in call(req, timeout=PASS_TIMEOUT):
                cols = records.decode(m)
                nbytes += sum(c.nbytes for c in cols.values())
                messages += 1
                sizes.append(len(m))
        seconds = time.perf_counter() - t0
        await channel.close()
        return {
            "bytes": nbytes,
            "seconds": seconds,
            "messages": messages,
            "message_bytes": int(median(sizes)),
        }

    async def plain_pass(msg: dict[str, Any]) -> dict[str, Any]:
        channel = grpc.aio.insecure_channel(
            args.plain, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        call = channel.unary_stream("/plain.Bytes/Stream")
        nbytes = 0
        t0 = time.perf_counter()
        for path in msg["paths"]:  # one call per file, as the ingest pass makes one per partition
            async for m in call(f"{path},{msg['size']}".encode(), timeout=PASS_TIMEOUT):
                nbytes += len(m)
        seconds = time.perf_counter() - t0
        await channel.close()
        return {"bytes": nbytes, "seconds": seconds}

    serve_commands(
        lambda msg: loop.run_until_complete(ingest_pass(msg) if msg["cmd"] == "ingest" else plain_pass(msg))
    )


def role_upload_sink(args: argparse.Namespace) -> None:
    """The append case's ceiling: a minimal grpc.aio server taking a client-streamed upload
    of raw `bytes` messages (`/plain.Upload/Put`). With metadata mode=discard it drops them;
    with mode=file it writes them, as they arrive, to one new file under --data-dir and
    fsyncs it before answering, as a plain upload server would."""
    import grpc
    from mlmesh.memory import keep_large_blocks
    from mlmesh.server import write_port_file

    keep_large_blocks()
    root = Path(args.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    count = 0

    async def put(request_iterator: Any, context: Any) -> bytes:
        nonlocal count
        mode = dict(context.invocation_metadata()).get("mode", "discard")
        n = 0
        if mode == "discard":
            async for m in request_iterator:
                n += len(m)
        else:
            count += 1
            with open(root / f"upload-{count}", "wb", buffering=0) as f:
                async for m in request_iterator:
                    n += f.write(m)
                os.fsync(f.fileno())
        return str(n).encode()

    async def main() -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            "plain.Upload", {"Put": grpc.stream_unary_rpc_method_handler(put)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port(f"{LOOPBACK}:0")
        await server.start()
        write_port_file(Path(args.port_file), {"port": port, "pid": os.getpid()})
        await server.wait_for_termination()

    asyncio.run(main())


def role_appender(args: argparse.Namespace) -> None:
    """{"cmd": "append", "records", "dataset"} appends synthetic float records through
    IngestClient.append; {"cmd": "npsave", ...} writes the same arrays with np.save + fsync;
    {"cmd": "upload", "mode", ...} streams the same bytes to the upload sink (--plain) in
    messages of Append's batch size, each a copy of its slice of the arrays (Append's framing
    copies each column once too).

    With --keep-blocks it keeps large malloc blocks first (`mlmesh.memory.keep_large_blocks`,
    as the services do); without, it has glibc's defaults, as `mlmesh ingest` has."""
    import grpc
    from mlmesh.clients import APPEND_BATCH_BYTES, IngestClient, record_batches, schema_of
    from mlmesh.memory import keep_large_blocks

    if args.keep_blocks:
        keep_large_blocks()
    sink = None
    if args.plain:
        channel = grpc.insecure_channel(
            args.plain,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        sink = channel.stream_unary("/plain.Upload/Put")

    def uploads(data: dict[str, np.ndarray]) -> Any:
        for a in data.values():
            view = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
            for off in range(0, len(view), APPEND_BATCH_BYTES):
                yield bytes(view[off : off + APPEND_BATCH_BYTES])

    def arrays(n: int) -> dict[str, np.ndarray]:
        return float_records(n)

    cache: dict[int, dict[str, np.ndarray]] = {}

    def handle(msg: dict[str, Any]) -> dict[str, Any]:
        data = cache.setdefault(msg["records"], arrays(msg["records"]))
        nbytes = sum(a.nbytes for a in data.values())
        if msg["cmd"] == "append":
            with IngestClient(args.addr, timeout=600) as client:
                client.create_dataset(msg["dataset"], schema_of(data))
                t0 = time.perf_counter()
                client.append(msg["dataset"], record_batches(data, APPEND_BATCH_BYTES))
                seconds = time.perf_counter() - t0
        elif msg["cmd"] == "upload":
            assert sink is not None
            t0 = time.perf_counter()
            sent = int(sink(uploads(data), metadata=(("mode", msg["mode"]),), timeout=PASS_TIMEOUT))
            seconds = time.perf_counter() - t0
            if sent != nbytes:
                raise RuntimeError(f"the upload sink got {sent} bytes of {nbytes}")
        else:
            out = Path(args.data_dir) / f"npsave-{msg['dataset']}"
            out.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            for name, a in data.items():
                with open(out / f"{name}.npy", "wb") as f:
                    np.save(f, a)
                    f.flush()
                    os.fsync(f.fileno())
            seconds = time.perf_counter() - t0
            # Kept, as ingest keeps its partitions: deleting them handed their page-cache pages
            # to the next repetition, which on this VM made its writes ~4x cheaper.
        return {"bytes": nbytes, "seconds": seconds}

    serve_commands(handle)


def role_cache_loader(args: argparse.Namespace) -> None:
    """{"cmd": "epoch", "dataset", "cache"}: one epoch of a trainer worker's partition loads
    (`trainer_svc.core.worker.load_partition`: its cache, else ingest); answers seconds."""
    from trainer_svc.clients import CallPolicy, IngestClient
    from trainer_svc.core.cache import PartitionCache
    from trainer_svc.core.types import TaskInfo

    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(_async(lambda: IngestClient(args.addr, CallPolicy(timeout=60))))

    async def epoch(msg: dict[str, Any]) -> dict[str, Any]:
        from trainer_svc.core.worker import load_partition

        cache = PartitionCache(Path(msg["cache"]), max_bytes=8 << 30)
        parts = await client.list_partitions(msg["dataset"])
        t0 = time.perf_counter()
        n = 0
        for p in parts:
            task = TaskInfo("", "", p.dataset, p.partition_id, 0, p.num_records, "", 0.0, 0)
            cols = await load_partition(cache, client, task)
            n += len(cols["label"])
        return {"seconds": time.perf_counter() - t0, "records": n}

    serve_commands(lambda msg: loop.run_until_complete(epoch(msg)))


# --- the driver ---------------------------------------------------------------------------


def timed_pass(
    readers: Sequence[Child], job: str, epochs: int, refresh_ms: int | None, **extra: Any
) -> tuple[float, int, int]:
    """One job of `epochs` epochs with every reader at once: (seconds, records, label sum)."""
    for i, r in enumerate(readers):
        msg = {"cmd": "read", "job": job, "epochs": epochs, "refresh_ms": refresh_ms}
        msg.update({k: (v[i] if isinstance(v, list) else v) for k, v in extra.items()})
        r.send(msg)
    results = [r.recv(PASS_TIMEOUT) for r in readers]
    seconds = max(x["end"] for x in results) - min(x["start"] for x in results)
    return seconds, sum(x["records"] for x in results), sum(x["label_sum"] for x in results)


def read_ids(paths: Sequence[Path]) -> np.ndarray:
    return np.concatenate(
        [np.fromfile(p, dtype="<i8") if p.exists() else np.zeros(0, np.int64) for p in paths]
    )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--fashion-records", type=int, default=60_000, help="Records of the Fashion-MNIST table.")
    p.add_argument("--float-mb", type=int, default=500, help="Size of the float dataset in MB.")
    p.add_argument("--epochs", type=int, default=0, help="Epochs per job in the steady-state cases (0: 5).")
    p.add_argument("--depth", type=int, default=3, help="Leases a mlmesh consumer holds (read-ahead + 1).")
    p.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"Comma-separated groups of cases to run, of {', '.join(GROUPS)} (default: all). "
        "'consumers' is vs_tf_data_service, worker_kill_lost_records and the Fashion-MNIST table.",
    )
    p.add_argument("--system", default="", help=argparse.SUPPRESS)
    p.add_argument("--addr", default="", help=argparse.SUPPRESS)
    p.add_argument("--plain", default="", help=argparse.SUPPRESS)
    p.add_argument("--name", default="reader", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--port-file", default="", help=argparse.SUPPRESS)
    p.add_argument("--dispatcher", default="", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--record-bytes", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--x-dtype", default="uint8", help=argparse.SUPPRESS)
    p.add_argument("--keep-blocks", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    roles = {
        "tf-dispatcher": role_tf_dispatcher,
        "tf-worker": role_tf_worker,
        "reader": role_reader,
        "plain-server": role_plain_server,
        "stream-reader": role_stream_reader,
        "appender": role_appender,
        "upload-sink": role_upload_sink,
        "cache-loader": role_cache_loader,
    }
    if args.role:
        roles[args.role](args)
        return 0

    only = {g.strip() for g in args.only.split(",") if g.strip()}
    if not only or only - set(GROUPS):
        p.error(f"--only {args.only!r}: expected a comma-separated subset of {', '.join(GROUPS)}")
    install_signal_handlers()
    reps = reps_of(args, full=3, quick=1)
    epochs = args.epochs or (2 if args.quick else 5)
    fashion_n = min(args.fashion_records, 10_000) if args.quick else args.fashion_records
    float_n = (min(args.float_mb, 64) if args.quick else args.float_mb) * 1_000_000 // 3144
    wait_for_quiet(args)
    consumers = "consumers" in only
    # The float dataset is read by read_stream, cached_epoch and the consumers; append makes its own.
    needs_floats = bool(only & {"read_stream", "cached_epoch", "consumers"})
    fashion, source = fashion_records(fashion_n) if consumers else ({}, "")
    floats = float_records(float_n) if needs_floats else {}
    print(
        f"groups: {', '.join(g for g in GROUPS if g in only)}; "
        + (f"{source}, {fashion_n:,} records of 792 bytes (batch 1024); " if consumers else "")
        + (
            f"{float_n:,} float records of 3,144 bytes ({float_n * 3144 / 1e6:.0f} MB, batch 256); "
            if needs_floats
            else ""
        )
        + f"{reps} repetition(s)",
        flush=True,
    )
    datasets = [(name, arrays) for name, arrays in ((FASHION, fashion), (FLOAT, floats)) if arrays]
    rates: dict[str, list[float]] = {}

    def note(key: str, value: float, text: str) -> None:
        rates.setdefault(key, []).append(value)
        print(f"  {key:28s} {text}", flush=True)

    with scratch_dir(args, BENCHMARK) as run, Children(run) as kids:
        for name, arrays in datasets:
            write_record_files(run / name, arrays)
        disp_addr = ""
        tf_workers: list[Child] = []
        if consumers:
            dispatcher = kids.start(
                "tf-dispatcher",
                role_argv(SCRIPT, "tf-dispatcher", "--port-file", str(run / "disp.json")),
                port_file=run / "disp.json",
            )
            disp_addr = f"{LOOPBACK}:{dispatcher.info['port']}"
            tf_workers = [
                kids.start(
                    f"tf-worker-{i}",
                    role_argv(
                        SCRIPT, "tf-worker", "--dispatcher", disp_addr, "--port-file", str(run / f"w{i}.json")
                    ),
                    port_file=run / f"w{i}.json",
                    wait=None,
                )
                for i in range(2)
            ]
        ingest_svc = kids.start(
            "ingest_svc",
            service_argv(
                "ingest_svc",
                run / "ingest.json",
                "--data-dir",
                str(run / "ingest-data"),
                "--metrics-port",
                "-1",
                "--lease-sweep-seconds",
                "0.5",
            ),
            port_file=run / "ingest.json",
        )
        parts = {name: ingest(ingest_svc.addr, name, arrays) for name, arrays in datasets}
        for w in tf_workers:
            w.wait_port_file(120)
        if datasets:
            held = " + ".join(f"{n} ({name})" for name, n in parts.items())
            print(
                f"ingest_svc holds {held} partitions; tf.data service has {len(tf_workers)} workers",
                flush=True,
            )

        # --- append, read_stream, cached_epoch -----------------------------------------
        helpers: list[Child] = []
        if "append" in only:
            sink = kids.start(
                "upload-sink",
                role_argv(
                    SCRIPT,
                    "upload-sink",
                    "--port-file",
                    str(run / "sink.json"),
                    "--data-dir",
                    str(run / "sink"),
                ),
                port_file=run / "sink.json",
            )
            appender = kids.start(
                "appender",
                role_argv(
                    SCRIPT,
                    "appender",
                    "--addr",
                    ingest_svc.addr,
                    "--data-dir",
                    str(run),
                    "--plain",
                    sink.addr,
                ),
                protocol=True,
            )
            kept = kids.start(
                "appender-kept",
                role_argv(
                    SCRIPT, "appender", "--addr", ingest_svc.addr, "--data-dir", str(run), "--keep-blocks"
                ),
                protocol=True,
            )
            helpers += [appender, kept]
        if "read_stream" in only:
            plain = kids.start(
                "plain-server",
                role_argv(SCRIPT, "plain-server", "--port-file", str(run / "plain.json")),
                port_file=run / "plain.json",
            )
            streamer = kids.start(
                "stream-reader",
                role_argv(SCRIPT, "stream-reader", "--addr", ingest_svc.addr, "--plain", plain.addr),
                protocol=True,
            )
            helpers.append(streamer)
        if "cached_epoch" in only:
            loader = kids.start(
                "cache-loader", role_argv(SCRIPT, "cache-loader", "--addr", ingest_svc.addr), protocol=True
            )
            helpers.append(loader)
        for c in helpers:
            c.recv(120)
        append_n = min(float_n, 40_000)  # ~126 MB
        float_files = [str(p) for p in sorted((run / FLOAT).glob("records-*.bin"))]

        def rate(key: str, result: dict[str, Any]) -> None:
            mb_s = result["bytes"] / result["seconds"] / 1e6
            note(key, mb_s, f"{mb_s:,.0f} MB/s")

        for rep in range(-1, reps):  # rep -1 warms every path untimed
            timed = rep >= 0
            if "append" in only:
                msg = {"records": append_n, "dataset": f"append-{rep + 1}"}
                runs = {
                    "append": (appender, {"cmd": "append", **msg}),
                    "npsave": (appender, {"cmd": "npsave", **msg}),
                    "upload_discard": (appender, {"cmd": "upload", "mode": "discard", **msg}),
                    "upload_file": (appender, {"cmd": "upload", "mode": "file", **msg}),
                    "append_kept": (
                        kept,
                        {"cmd": "append", "records": append_n, "dataset": f"kept-{rep + 1}"},
                    ),
                }
                # Each repetition runs them in the other order: what one leaves behind (memory
                # freed, writeback, page-cache pages) must not always favour the same one.
                keys = list(runs) if rep % 2 == 0 else list(reversed(runs))
                results = {key: runs[key][0].call(runs[key][1], PASS_TIMEOUT) for key in keys}
                if timed:
                    for key in runs:
                        rate(key, results[key])
                    note("append_load", os.getloadavg()[0], f"load average {os.getloadavg()[0]:.2f}")
            if "read_stream" in only:
                s = streamer.call(
                    {"cmd": "ingest", "dataset": FLOAT, "partitions": parts[FLOAT]}, PASS_TIMEOUT
                )
                q = streamer.call(
                    {"cmd": "plain", "paths": float_files, "size": s["message_bytes"]}, PASS_TIMEOUT
                )
                if timed:
                    rate("read_stream", s)
                    rate("plain_stream", q)
            if "cached_epoch" in only:
                cache_dir = run / f"cache-{rep + 1}"
                e1 = loader.call({"cmd": "epoch", "dataset": FLOAT, "cache": str(cache_dir)}, PASS_TIMEOUT)
                e2 = loader.call({"cmd": "epoch", "dataset": FLOAT, "cache": str(cache_dir)}, PASS_TIMEOUT)
                if timed:
                    note("epoch1", e1["seconds"], f"epoch 1 loads {e1['seconds']:.2f} s")
                    note("epoch2", e2["seconds"], f"epoch 2 loads {e2['seconds']:.2f} s")
        for c in helpers:
            c.stop()
        lost: dict[str, tuple[int, int, bool, float]] = {}
        if consumers:
            run_consumers(
                args, run, kids, ingest_svc.addr, disp_addr, fashion, floats, epochs, reps, note, lost
            )

    m = {key: median(v) for key, v in rates.items()}
    cases = result_cases(only, m, lost, epochs)
    print_table(BENCHMARK, cases)
    print(
        f"machine: {machine_line()}; medians of {reps} repetition(s); ratio > 1: mlmesh is faster "
        "(cached_epoch and lost records: lower is better)"
    )
    write_json(args.json, BENCHMARK, cases)
    return 0


def run_consumers(
    args: argparse.Namespace,
    run: Path,
    kids: Children,
    ingest_addr: str,
    disp_addr: str,
    fashion: dict[str, np.ndarray],
    floats: dict[str, np.ndarray],
    epochs: int,
    reps: int,
    note: Any,
    lost: dict[str, tuple[int, int, bool, float]],
) -> None:
    """vs_tf_data_service, the Fashion-MNIST table, then worker_kill_lost_records (into `lost`)."""
    float_n = len(floats["label"])

    def reader(system: str, name: str, dataset: str) -> Child:
        arrays = fashion if dataset == FASHION else floats
        addr = {"mlmesh": ingest_addr, "tfdata": disp_addr, "local": ""}[system]
        argv = role_argv(
            SCRIPT, "reader", "--system", system, "--addr", addr, "--name", name,
            "--data-dir", str(run / dataset), "--batch", "1024" if dataset == FASHION else "256",
            "--record-bytes", str(record_bytes(arrays)),
            "--x-dtype", "uint8" if dataset == FASHION else "float32", "--depth", str(args.depth),
        )  # fmt: skip
        return kids.start(name, argv, protocol=True)

    # --- consumers: the float pass, then the Fashion-MNIST table --------------------
    r = {
        (s, i, d): reader(s, f"{s}-{d}-r{i}", d)
        for d in (FLOAT, FASHION)
        for s in ("mlmesh", "tfdata")
        for i in range(2)
    }
    r[("local", 0, FASHION)] = reader("local", f"local-{FASHION}", FASHION)
    for c in r.values():
        c.recv(180)

    def checked_pass(
        key: str, readers: list[Child], dataset: str, e: int, refresh: int | None, rep: int
    ) -> None:
        arrays = fashion if dataset == FASHION else floats
        n, want = len(arrays["label"]), int(arrays["label"].sum())
        job = f"bench-{key}-{rep + 1}"
        t0 = time.monotonic()
        if readers[0].name.startswith("mlmesh"):  # creating the job is part of the pass
            enqueue_epochs(ingest_addr, dataset, job, e)
        setup = time.monotonic() - t0
        seconds, got, got_sum = timed_pass(readers, job, e, refresh)
        seconds += setup
        if got != n * e or got_sum != want * e:
            raise RuntimeError(
                f"{key} delivered {got} records (label sum {got_sum}); expected {n * e} ({want * e})"
            )
        if rep >= 0:
            note(key, got / seconds, f"{got / seconds:>10,.0f} records/s ({seconds:.2f} s)")

    passes: list[tuple[str, list[Child], str, int, int | None]] = []
    for s in ("mlmesh", "tfdata"):
        passes.append((f"{s}-floats-2", [r[(s, 0, FLOAT)], r[(s, 1, FLOAT)]], FLOAT, 1, TASK_REFRESH_MS))
    for s in ("mlmesh", "tfdata"):
        for k in (1, 2):
            for e in (epochs, 1):
                readers = [r[(s, i, FASHION)] for i in range(k)]
                passes.append((f"{s}-fashion-{k}x{e}", readers, FASHION, e, TASK_REFRESH_MS))
    passes.append((f"local-fashion-1x{epochs}", [r[("local", 0, FASHION)]], FASHION, epochs, None))
    passes.append(("tfdata-fashion-1x1-default", [r[("tfdata", 0, FASHION)]], FASHION, 1, None))
    for rep in range(-1, reps):  # rep -1 warms every path untimed
        print(f"repetition {rep + 1}" if rep >= 0 else "warm-up", flush=True)
        for key, readers, dataset, e, refresh in passes:
            checked_pass(key, readers, dataset, e, refresh, rep)

    # --- one consumer killed after ~25 % -----------------------------------------------
    for s in ("mlmesh", "tfdata"):
        victim, survivor = r[(s, 1, FLOAT)], r[(s, 0, FLOAT)]
        job = f"bench-kill-{s}"
        ids = [run / f"{job}-{i}.ids" for i in range(2)]
        if s == "mlmesh":
            enqueue_epochs(ingest_addr, FLOAT, job, 1)
        for child, path in ((survivor, ids[0]), (victim, ids[1])):
            child.send(
                {
                    "cmd": "read", "job": job, "epochs": 1, "refresh_ms": TASK_REFRESH_MS,
                    "ids": str(path), "lease_seconds": KILL_LEASE_SECONDS,
                }
            )  # fmt: skip
        t0 = time.monotonic()
        while read_ids(ids).size < float_n // 4 and time.monotonic() - t0 < PASS_TIMEOUT:
            time.sleep(0.02)
        os.killpg(victim.proc.pid, signal.SIGKILL)
        finished = True
        try:
            survivor.recv(max(120.0, 10 * (time.monotonic() - t0)))
        except TimeoutError:
            finished = False  # hung: stop it, the pass does not finish by itself
            survivor.stop()
        got = read_ids(ids)
        unique = np.unique(got)
        lost[s] = (float_n - unique.size, got.size - unique.size, finished, time.monotonic() - t0)
        print(
            f"  kill {s:8s} lost {lost[s][0]:,} records, {lost[s][1]:,} delivered twice, "
            f"{'finished' if finished else 'HUNG'} in {lost[s][3]:.1f} s",
            flush=True,
        )


def result_cases(
    only: set[str], m: dict[str, float], lost: dict[str, tuple[int, int, bool, float]], epochs: int
) -> list[Case]:
    """The rows of the groups that ran, from the medians `m`."""
    peer = f"tf.data service (dispatcher + 2 workers, DYNAMIC, no compression, {TASK_REFRESH_MS} ms refresh)"
    cases: list[Case] = []
    if "append" in only:
        npsave = "np.save + fsync of the same arrays"
        load = f"median load average {m['append_load']:.2f} after each repetition"
        cases += [
            Case("append", "MB/s", m["append"], npsave, m["npsave"], note=load),
            # Diagnostics, not goals: the same bytes in the same messages through a minimal
            # grpc.aio server, to tell gRPC's share of the cost from the disk's.
            Case("append_diag_upload_discarded", "MB/s", m["upload_discard"], npsave, m["npsave"]),
            Case("append_diag_upload_to_file", "MB/s", m["upload_file"], npsave, m["npsave"]),
            Case("append_diag_client_keeps_blocks", "MB/s", m["append_kept"], npsave, m["npsave"]),
        ]
    if "read_stream" in only:
        cases.append(
            Case(
                "read_stream",
                "MB/s",
                m["read_stream"],
                "plain grpc.aio file server, same bytes and message size",
                m["plain_stream"],
            )
        )
    if "cached_epoch" in only:
        cases.append(
            Case(
                "cached_epoch", "s", m["epoch2"], "epoch 1 load time (ratio = epoch 2 / epoch 1)", m["epoch1"]
            )
        )
    if "consumers" not in only:
        return cases
    cases += [
        Case(
            "vs_tf_data_service",
            "records/s",
            m["mlmesh-floats-2"],
            f"{peer}, 2 consumers",
            m["tfdata-floats-2"],
        ),
        Case(
            "worker_kill_lost_records",
            "records",
            lost["mlmesh"][0],
            f"tf.data service, same kill ({'finished' if lost['tfdata'][2] else 'hung'})",
            lost["tfdata"][0],
            note=(
                f"mlmesh pass {'finished' if lost['mlmesh'][2] else 'HUNG'} by itself "
                f"in {lost['mlmesh'][3]:.1f} s"
            ),
        ),
    ]
    for k in (1, 2):
        for e in (epochs, 1):
            what = f"{e} epochs in one job" if e > 1 else "1 epoch as a new job"
            cases.append(
                Case(
                    f"fashion, {k} client{'s' if k > 1 else ''}, {what}",
                    "records/s",
                    m[f"mlmesh-fashion-{k}x{e}"],
                    f"{peer}, {k} client{'s' if k > 1 else ''}",
                    m[f"tfdata-fashion-{k}x{e}"],
                )
            )
    cases.append(
        Case(
            f"fashion, 1 client, {epochs} epochs vs local floor",
            "records/s",
            m[f"mlmesh-fashion-1x{epochs}"],
            "local tf.data from_tensor_slices, 1 process",
            m[f"local-fashion-1x{epochs}"],
        )
    )
    cases.append(
        Case(
            "fashion, 1 client, 1 epoch, peer at defaults",
            "records/s",
            m["mlmesh-fashion-1x1"],
            "tf.data service, public distribute() defaults (1 s refresh)",
            m["tfdata-fashion-1x1-default"],
        )
    )
    return cases


if __name__ == "__main__":
    sys.exit(main())
