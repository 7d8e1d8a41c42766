"""Records/s streaming Fashion-MNIST out of ingest_svc, against tf.data service and local tf.data.

    python benchmarks/ingest_read.py --json benchmarks/results/ingest_read.json [--quick]

What runs (all real processes on loopback, ephemeral ports, torn down at the end):

- mlmesh: one `python -m ingest_svc` holding the 60k training records (uint8[28,28] image +
  int64 label, 792 bytes a record) in 16 partitions, as `mlmesh ingest` would cut them. A job
  is what the trainer does: EnqueueEpoch per epoch, then each reader loops LeaseTask ->
  ReadPartition(batch_size=B) -> CompleteTask until nothing is pending; with 2 readers the
  queue hands partitions to whichever asks first.
- tf.data service (the peer): 1 DispatchServer + 2 WorkerServer processes; a job is
  `distribute(processing_mode=ShardingPolicy.DYNAMIC, compression=None)` over
  FixedLengthRecordDataset on the same records written as 16 raw files, batched by B and
  decoded on the workers (`repeat(E)` before distributing for E epochs); 2 readers share
  the job, so each record comes out once. The client's task refresh is set to 50 ms (through
  the private `_distribute`; the public default of 1 s makes every job end ~1 s late, shown
  as a separate case).
- local tf.data (a floor): `from_tensor_slices((images, labels)).batch(B).prefetch` in one
  reader process, no network at all.

Every reader is its own process, started and warmed before the clock starts, and reports the
records it got and their label sum: the run fails unless each system delivered every record
exactly once per epoch. A pass is timed from job creation to the last reader's last record
(the mlmesh EnqueueEpoch calls included). Cases: a new job per epoch, and E epochs in one
job (steady state). Figures are medians over repetitions (systems interleaved).
"""

from __future__ import annotations

import argparse
import os
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

BENCHMARK = "ingest_read"
SCRIPT = "ingest_read.py"
DATASET = "fashion_train"
RECORD_BYTES = 28 * 28 + 8
NUM_FILES = 16
# tf.data service client task refresh given to the peer (its public API's default is 1000 ms).
TASK_REFRESH_MS = 50  # partitions on the mlmesh side, files on the tf.data side
READ_TIMEOUT = 300.0


# --- data ---------------------------------------------------------------------------------


def load_records(limit: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Fashion-MNIST train (images uint8 [n,28,28], labels int64 [n]); synthetic if absent."""
    try:
        from mlmesh.data.fashion_mnist import load_fashion_mnist

        images, labels = load_fashion_mnist("train", limit=limit, allow_download=False)
        return np.ascontiguousarray(images), labels.astype(np.int64), "Fashion-MNIST train"
    except Exception as e:  # no Debian package here: same shapes, synthetic values
        print(f"Fashion-MNIST not available ({e}); using synthetic records", file=sys.stderr)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(limit, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=limit, dtype=np.int64)
        return images, labels, "synthetic uint8[28,28] + int64 label"


def write_record_files(directory: Path, images: np.ndarray, labels: np.ndarray) -> list[str]:
    """16 raw files of 792-byte records (784 pixels, then the label as little-endian int64)."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    records = np.empty((n, RECORD_BYTES), dtype=np.uint8)
    records[:, :784] = images.reshape(n, 784)
    records[:, 784:] = labels.astype("<i8").view(np.uint8).reshape(n, 8)
    paths = []
    for i, chunk in enumerate(np.array_split(records, NUM_FILES)):
        path = directory / f"records-{i:02d}.bin"
        chunk.tofile(path)
        paths.append(str(path))
    np.save(directory / "images.npy", images)
    np.save(directory / "labels.npy", labels)
    return paths


def ingest(addr: str, images: np.ndarray, labels: np.ndarray) -> int:
    """Load the records into ingest_svc the way `mlmesh ingest` does; returns the partition count."""
    from mlmesh.cli.ingest import ingest_arrays, partition_bytes_for
    from mlmesh.clients import IngestClient

    with IngestClient(addr, timeout=120) as client:
        result = ingest_arrays(
            client,
            DATASET,
            {"image": images, "label": labels},
            max_partition_bytes=partition_bytes_for(len(labels), RECORD_BYTES, NUM_FILES),
        )
        return result.partitions


def enqueue_epochs(addr: str, job_id: str, epochs: int) -> int:
    """Queue `epochs` epochs of the dataset for a job (what the trainer's coordinator does)."""
    from mlmesh.clients import IngestClient
    from mlmesh.ingest.v1 import ingest_pb2

    tasks = 0
    with IngestClient(addr) as client:
        for epoch in range(epochs):
            req = ingest_pb2.EnqueueEpochRequest(
                job_id=job_id, dataset=DATASET, epoch=epoch, shuffle=True, seed=epoch
            )
            tasks += int(client.stub.EnqueueEpoch(req, timeout=30).tasks_enqueued)
    return tasks


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


def role_reader(args: argparse.Namespace) -> None:
    """Reads one pass per {"cmd": "read"}; answers records, label sum, start and end (monotonic)."""
    batch = args.batch
    if args.system == "mlmesh":
        from mlmesh import tensor
        from mlmesh.channels import sync_channel
        from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

        channel = sync_channel(args.addr)
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        def read(msg: dict[str, Any]) -> dict[str, Any]:
            n = total = partitions = 0
            start = time.monotonic()
            while True:
                lease = stub.LeaseTask(
                    ingest_pb2.LeaseTaskRequest(job_id=msg["job"], worker_id=args.name, lease_seconds=120),
                    timeout=30,
                )
                if not lease.HasField("task"):
                    break  # nothing pending: done, or the other reader holds the last leases
                task = lease.task
                req = ingest_pb2.ReadPartitionRequest(
                    dataset=task.dataset, partition_id=task.partition_id, batch_size=batch
                )
                for resp in stub.ReadPartition(req, timeout=READ_TIMEOUT):
                    features = resp.batch.features
                    tensor.from_proto(features["image"], "image")
                    labels = tensor.from_proto(features["label"], "label")
                    n += len(labels)
                    total += int(labels.sum())
                stub.CompleteTask(ingest_pb2.CompleteTaskRequest(lease_id=task.lease_id), timeout=30)
                partitions += 1
            return {
                "records": n,
                "label_sum": total,
                "start": start,
                "end": time.monotonic(),
                "units": partitions,
            }

    else:
        import tensorflow as tf
        from tensorflow.python.data.experimental.ops import data_service_ops as dso

        if args.system == "local":
            images = np.load(Path(args.data_dir) / "images.npy")
            labels = np.load(Path(args.data_dir) / "labels.npy")
            local = (
                tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).prefetch(tf.data.AUTOTUNE)
            )

            def make(job: str, epochs: int, refresh_ms: int | None = None) -> Any:
                return local.repeat(epochs)

        else:
            files = sorted(str(p) for p in Path(args.data_dir).glob("records-*.bin"))

            def decode(raw: Any) -> tuple[Any, Any]:
                b = tf.io.decode_raw(raw, tf.uint8)  # [n, 792]
                return tf.reshape(b[:, :784], [-1, 28, 28]), tf.bitcast(b[:, 784:], tf.int64)

            def make(job: str, epochs: int, refresh_ms: int | None = None) -> Any:
                ds = tf.data.FixedLengthRecordDataset(files, RECORD_BYTES).batch(batch).map(decode)
                ds = ds.repeat(epochs)  # several epochs are one job, as a training run would use it
                options: dict[str, Any] = {
                    "processing_mode": tf.data.experimental.service.ShardingPolicy.DYNAMIC,
                    "service": args.addr,
                    "job_name": job,
                    "compression": None,
                }
                if refresh_ms is None:
                    return ds.apply(tf.data.experimental.service.distribute(**options))
                # The public distribute() leaves the client's task refresh at 1 s, and a client learns
                # that a job has ended only at a refresh: every job ends ~1 s late. The private twin
                # takes the hint; we give the peer the faster setting.
                return ds.apply(dso._distribute(task_refresh_interval_hint_ms=refresh_ms, **options))

        def read(msg: dict[str, Any]) -> dict[str, Any]:
            n = total = batches = 0
            start = time.monotonic()
            for image, label in make(msg["job"], msg["epochs"], msg.get("refresh_ms")):
                image.numpy()
                lbl = label.numpy()
                n += len(lbl)
                total += int(lbl.sum())
                batches += 1
            return {
                "records": n,
                "label_sum": total,
                "start": start,
                "end": time.monotonic(),
                "units": batches,
            }

    serve_commands(lambda msg: read(msg))


# --- the driver ---------------------------------------------------------------------------


def timed_pass(
    readers: Sequence[Child], job: str, epochs: int, refresh_ms: int | None
) -> tuple[float, int, int]:
    """One job of `epochs` epochs with every reader at once: (seconds, records, label sum)."""
    for r in readers:
        r.send({"cmd": "read", "job": job, "epochs": epochs, "refresh_ms": refresh_ms})
    results = [r.recv(READ_TIMEOUT) for r in readers]
    seconds = max(x["end"] for x in results) - min(x["start"] for x in results)
    return seconds, sum(x["records"] for x in results), sum(x["label_sum"] for x in results)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=60_000, help="Records to stream (<= 60,000 real ones).")
    p.add_argument("--epochs", type=int, default=0, help="Epochs per job in the steady-state cases (0: 5).")
    p.add_argument("--batch", type=int, default=1024, help="Records per streamed message / tf.data element.")
    p.add_argument("--system", default="", help=argparse.SUPPRESS)
    p.add_argument("--addr", default="", help=argparse.SUPPRESS)
    p.add_argument("--name", default="reader", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--port-file", default="", help=argparse.SUPPRESS)
    p.add_argument("--dispatcher", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    roles = {"tf-dispatcher": role_tf_dispatcher, "tf-worker": role_tf_worker, "reader": role_reader}
    if args.role:
        roles[args.role](args)
        return 0

    install_signal_handlers()
    reps = reps_of(args, full=5, quick=1)
    records = min(args.records, 10_000) if args.quick else args.records
    epochs = args.epochs or (2 if args.quick else 5)
    wait_for_quiet(args)
    images, labels, source = load_records(records)
    n, want_sum = len(labels), int(labels.sum())
    print(f"data: {source}, {n:,} records of {RECORD_BYTES} bytes, batch {args.batch}, {reps} repetition(s)")

    with scratch_dir(args, BENCHMARK) as run, Children(run) as kids:
        files_dir = run / "records"
        write_record_files(files_dir, images, labels)
        # The peer's servers start first, so their TensorFlow imports overlap with our ingest.
        dispatcher = kids.start(
            "tf-dispatcher",
            role_argv(SCRIPT, "tf-dispatcher", "--port-file", str(run / "disp.json")),
            port_file=run / "disp.json",
        )
        disp_addr = f"{LOOPBACK}:{dispatcher.info['port']}"
        workers = [
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
            ),
            port_file=run / "ingest.json",
        )
        partitions = ingest(ingest_svc.addr, images, labels)
        for w in workers:
            w.wait_port_file(120)
        print(f"ingest_svc holds {n:,} records in {partitions} partitions; tf.data service has 2 workers")

        def reader(system: str, name: str, addr: str) -> Child:
            return kids.start(
                name,
                role_argv(
                    SCRIPT,
                    "reader",
                    "--system",
                    system,
                    "--addr",
                    addr,
                    "--name",
                    name,
                    "--data-dir",
                    str(files_dir),
                    "--batch",
                    str(args.batch),
                ),
                protocol=True,
            )

        r0 = {
            s: reader(s, f"{s}-r0", a)
            for s, a in (("mlmesh", ingest_svc.addr), ("tfdata", disp_addr), ("local", ""))
        }
        r1 = {s: reader(s, f"{s}-r1", a) for s, a in (("mlmesh", ingest_svc.addr), ("tfdata", disp_addr))}
        for r in [*r0.values(), *r1.values()]:
            r.recv(120)  # {"ready": true} once its imports and set-up are done
        groups = {
            "mlmesh-1": [r0["mlmesh"]],
            "tfdata-1": [r0["tfdata"]],
            "local": [r0["local"]],
            "mlmesh-2": [r0["mlmesh"], r1["mlmesh"]],
            "tfdata-2": [r0["tfdata"], r1["tfdata"]],
        }
        # (key, reader group, epochs per job); interleaved within each repetition
        # refresh None: tf.data's public-API default (see make() in role_reader)
        passes: list[tuple[str, str, int, int | None]] = [
            (f"{g}x{e}", g, e, TASK_REFRESH_MS)
            for g in ("mlmesh-1", "tfdata-1", "mlmesh-2", "tfdata-2")
            for e in (1, epochs)
        ]
        passes += [(f"localx{epochs}", "local", epochs, None), ("tfdata-1x1-default", "tfdata-1", 1, None)]
        rates: dict[str, list[float]] = {key: [] for key, *_ in passes}
        for rep in range(-1, reps):  # rep -1 warms every path (page cache, TF graphs) untimed
            for key, g, e, refresh_ms in passes:
                job = f"bench-{key}-{rep + 1}"
                setup = 0.0
                if g.startswith("mlmesh"):  # creating the job is part of the pass, as it is for the peer
                    t0 = time.monotonic()
                    enqueue_epochs(ingest_svc.addr, job, e)
                    setup = time.monotonic() - t0
                seconds, got, got_sum = timed_pass(groups[g], job, e, refresh_ms)
                seconds += setup
                if got != n * e or got_sum != want_sum * e:
                    raise RuntimeError(
                        f"{key} delivered {got} records (label sum {got_sum}); "
                        f"expected {n * e} ({want_sum * e}): not every record exactly once"
                    )
                if rep >= 0:
                    rates[key].append(got / seconds)
                    print(
                        f"  rep {rep + 1}: {key:12s} {got / seconds:>10,.0f} records/s ({seconds:.2f} s)",
                        flush=True,
                    )

    m = {key: median(v) for key, v in rates.items()}
    peer = f"tf.data service (dispatcher + 2 workers, DYNAMIC, {TASK_REFRESH_MS} ms task refresh)"
    cases = [
        Case(
            f"1 client, {epochs} epochs in one job",
            "records/s",
            m[f"mlmesh-1x{epochs}"],
            f"{peer}, 1 client",
            m[f"tfdata-1x{epochs}"],
        ),
        Case(
            f"2 clients, {epochs} epochs in one job",
            "records/s",
            m[f"mlmesh-2x{epochs}"],
            f"{peer}, 2 clients",
            m[f"tfdata-2x{epochs}"],
        ),
        Case(
            "1 client, 1 epoch as a new job",
            "records/s",
            m["mlmesh-1x1"],
            f"{peer}, 1 client",
            m["tfdata-1x1"],
        ),
        Case(
            "2 clients, 1 epoch as a new job",
            "records/s",
            m["mlmesh-2x1"],
            f"{peer}, 2 clients",
            m["tfdata-2x1"],
        ),
        Case(
            f"1 client, {epochs} epochs vs local floor",
            "records/s",
            m[f"mlmesh-1x{epochs}"],
            "local tf.data from_tensor_slices, 1 process",
            m[f"localx{epochs}"],
        ),
        Case(
            "1 client, 1 epoch as a new job, peer at defaults",
            "records/s",
            m["mlmesh-1x1"],
            "tf.data service, public distribute() defaults (1 s task refresh), 1 client",
            m["tfdata-1x1-default"],
        ),
    ]
    print_table(BENCHMARK, cases)
    print(
        f"machine: {machine_line()}; medians of {reps} repetition(s); {n:,} records a pass, "
        f"batch {args.batch}; ratio > 1: mlmesh is faster"
    )
    write_json(args.json, BENCHMARK, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
