"""Batch-1 prediction throughput and latency through mlmesh serving, against a plain gRPC server.

    python benchmarks/serving_throughput.py --json benchmarks/results/serving_throughput.json [--quick]

One model for every server: a freshly initialised `mlmesh.models.fashion_cnn:build()` CNN,
exported by the trainer's own exporter (`trainer_svc.core.export.export_saved_model`:
signature "serving_default", input "image" float32 [None,28,28], outputs {"probabilities"}).
Every request is one real Fashion-MNIST test image (batch 1). Servers, all real processes on
loopback:

- (a) mlmesh: `python -m gateway` (Envoy) in front of 2 `python -m serving_svc` replicas
  (default settings: dynamic batching up to 32 examples / 2 ms);
- (b) one of those serving_svc replicas, called directly;
- (c) baseline: a plain `grpc.aio` server in its own process implementing the same Predict RPC
  by calling the SavedModel's "serving_default" function once per request, no batching;
- JSON: `POST /v1/models/fashion:predict {"instances": [...]}` through the gateway (HTTP/1.1),
  compared with gRPC through the same gateway.

Load: h2load (nghttp2-client) with 16 connections, one request in flight on each (closed
loop, concurrency 16), for a fixed duration after a warm-up, in its own process; latencies
come from its per-request log. Without h2load the script falls back to a Python load process
(slower: it saturates near 1k requests/s, which then caps every figure). Every server's
answer is checked against the others before the runs, and the servers' own counters must show
no failed Predict after them. Cases are interleaved per repetition; figures are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
    Case,
    Children,
    base_parser,
    child_env,
    install_signal_handlers,
    machine_line,
    median,
    percentile,
    print_table,
    reps_of,
    role_argv,
    scratch_dir,
    service_argv,
    wait_for_quiet,
    write_json,
)

BENCHMARK = "serving_throughput"
SCRIPT = "serving_throughput.py"
MODEL = "fashion"
PREDICT_PATH = "/mlmesh.serving.v1.ServingService/Predict"
CONCURRENCY = 16


# --- roles --------------------------------------------------------------------------------


def role_export(args: argparse.Namespace) -> None:
    """Export a fresh fashion_cnn as <repo>/fashion/1 the way the trainer does."""
    import keras

    keras.utils.set_random_seed(0)
    repo = Path(args.repo)
    try:
        from mlmesh.models.fashion_cnn import build

        from trainer_svc.core import tfmodel
        from trainer_svc.core.export import export_saved_model

        ms = build()
        path, _ = export_saved_model(ms, tfmodel.input_specs(ms), repo, MODEL)
    except ImportError as e:  # the shipped model or exporter is missing: the same CNN, inline
        print(f"exporting an inline CNN ({e})", file=sys.stderr)
        path = _export_inline(repo)
    print(f"exported {path}", file=sys.stderr)


def _export_inline(repo: Path) -> Path:
    import keras
    import tensorflow as tf

    inputs = keras.Input(shape=(28, 28), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Reshape((28, 28, 1))(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="image")])
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": model(image, training=False)}

    module.serve = serve
    final = repo / MODEL / "1"
    tmp = repo / MODEL / ".tmp-export"
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": serve.get_concrete_function()})
    os.rename(tmp, final)
    return final


def role_baseline_server(args: argparse.Namespace) -> None:
    """The plain server: grpc.aio, the SavedModel's signature called inline per request."""
    import grpc
    import tensorflow as tf
    from mlmesh import tensor
    from mlmesh.server import write_port_file
    from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc
    from prometheus_client import Counter, start_http_server

    fn = tf.saved_model.load(args.model_dir).signatures["serving_default"]
    calls = Counter("bench_baseline_predict", "Predict calls answered", ["code"])

    class Servicer(serving_pb2_grpc.ServingServiceServicer):
        async def Predict(
            self, request: serving_pb2.PredictRequest, context: grpc.aio.ServicerContext
        ) -> serving_pb2.PredictResponse:
            try:
                image = tensor.from_proto(request.inputs["image"], "image")
                out = fn(image=tf.constant(image))
                response = serving_pb2.PredictResponse(
                    model_name=request.model_name,
                    version=1,
                    outputs={k: tensor.to_proto(v.numpy()) for k, v in out.items()},
                )
            except Exception:
                calls.labels("error").inc()
                raise
            calls.labels("OK").inc()
            return response

    async def serve() -> None:
        metrics, _ = start_http_server(0, addr=LOOPBACK)
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)]
        )
        serving_pb2_grpc.add_ServingServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port(f"{LOOPBACK}:0")
        await server.start()
        write_port_file(
            Path(args.port_file), {"port": port, "metrics_port": metrics.server_port, "pid": os.getpid()}
        )
        await server.wait_for_termination()

    asyncio.run(serve())


def role_pyload(args: argparse.Namespace) -> None:
    """Fallback load generator: CONCURRENCY closed-loop workers for a duration; prints JSON."""
    payload = Path(args.payload).read_bytes()
    warmup, duration = args.warmup, args.duration
    lat: list[float] = []
    failed = 0

    if args.kind == "grpc":
        import grpc

        async def run() -> None:
            nonlocal failed
            channels = [grpc.aio.insecure_channel(args.target) for _ in range(CONCURRENCY)]
            calls = [
                c.unary_unary(PREDICT_PATH, request_serializer=None, response_deserializer=None)
                for c in channels
            ]
            body = payload[5:]  # the file holds a gRPC frame; the stub frames it again
            t_start = time.monotonic()
            t_measure, t_end = t_start + warmup, t_start + warmup + duration

            async def worker(call: Any) -> None:
                nonlocal failed
                while (now := time.monotonic()) < t_end:
                    try:
                        await call(body, timeout=30)
                        if now >= t_measure:
                            lat.append(time.monotonic() - now)
                    except grpc.RpcError:
                        failed += 1

            await asyncio.gather(*(worker(c) for c in calls))
            for c in channels:
                await c.close()

        asyncio.run(run())
    else:
        import http.client
        import threading

        host, port = args.target.split(":")
        t_start = time.monotonic()
        t_measure, t_end = t_start + warmup, t_start + warmup + duration
        lock = threading.Lock()

        def worker() -> None:
            nonlocal failed
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            while (now := time.monotonic()) < t_end:
                conn.request(
                    "POST", f"/v1/models/{MODEL}:predict", payload, {"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                resp.read()
                with lock:
                    if resp.status != 200:
                        failed += 1
                    elif now >= t_measure:
                        lat.append(time.monotonic() - now)

        threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(json.dumps({"ok": len(lat), "failed": failed, "seconds": duration, "latencies": lat}))


# --- load generation ------------------------------------------------------------------------


def run_h2load(
    target: str, path: str, payload: Path, kind: str, duration: float, warmup: float, log: Path
) -> dict[str, Any]:
    """One timed run with h2load: requests/s and per-request latencies (s) of the measured period."""
    cmd = [
        "h2load",
        "-c",
        str(CONCURRENCY),
        "-m",
        "1",
        "-t",
        "1",
        "-D",
        f"{duration:g}",
        "--warm-up-time",
        f"{warmup:g}",
        "-d",
        str(payload),
        "--log-file",
        str(log),
    ]
    if kind == "grpc":
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    else:
        cmd += ["--h1", "-H", "content-type: application/json"]
    cmd.append(f"http://{target}{path}")
    log.unlink(missing_ok=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 60, check=False)
    text = out.stdout + out.stderr
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if out.returncode != 0 or not m or not r or not s:
        raise RuntimeError(f"h2load failed ({out.returncode}):\n{text}")
    lat = []
    for line in log.read_text().splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[1] == "200":
            lat.append(int(cols[2]) / 1e6)
    failed = int(r.group(5)) + int(s.group(3)) + int(s.group(4))
    return {"rps": float(m.group(2)), "ok": int(r.group(4)), "failed": failed, "latencies": lat}


def run_pyload(target: str, payload: Path, kind: str, duration: float, warmup: float) -> dict[str, Any]:
    """One timed run with the fallback Python load process."""
    argv = role_argv(
        SCRIPT,
        "pyload",
        "--target",
        target,
        "--payload",
        str(payload),
        "--kind",
        kind,
        "--duration",
        f"{duration:g}",
        "--warmup",
        f"{warmup:g}",
    )
    out = subprocess.run(
        argv, capture_output=True, text=True, env=child_env(), timeout=duration + warmup + 120, check=True
    )
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    res["rps"] = res["ok"] / duration
    return res


# --- checks ---------------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def predict_grpc(addr: str, request: Any) -> np.ndarray:
    from mlmesh import tensor
    from mlmesh.channels import sync_channel
    from mlmesh.serving.v1 import serving_pb2_grpc

    with sync_channel(addr) as channel:
        resp = serving_pb2_grpc.ServingServiceStub(channel).Predict(request, timeout=30)
    return np.array(tensor.from_proto(resp.outputs["probabilities"], "probabilities"))


def predict_json(addr: str, body: bytes) -> np.ndarray:
    req = urllib.request.Request(
        f"http://{addr}/v1/models/{MODEL}:predict", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return np.array(json.loads(resp.read())["predictions"], dtype=np.float32)


def wait_answers(what: str, fn: Any, timeout: float = 60.0) -> np.ndarray:
    """Retry a prediction until it succeeds (the gateway admits replicas after health checks)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return np.asarray(fn())
        except Exception as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} never answered: {e}") from e
            time.sleep(0.5)


def scrape_codes(port: int, metric: str, method: str = "") -> dict[str, float]:
    """A Prometheus counter's samples summed by their `code` label (only `method`'s, if given)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(metric + "{") or (method and f'method="{method}"' not in line):
            continue
        code = re.search(r'code="([^"]*)"', line)
        if code:
            out[code.group(1)] = out.get(code.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return out


# --- the driver ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=0, help="Measured seconds per run (0: 10, quick 3).")
    p.add_argument("--loadgen", choices=("auto", "h2load", "python"), default="auto")
    for hidden in ("--repo", "--model-dir", "--port-file", "--target", "--payload", "--kind"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=float, default=2.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    roles = {"export": role_export, "baseline-server": role_baseline_server, "pyload": role_pyload}
    if args.role:
        roles[args.role](args)
        return 0

    install_signal_handlers()
    reps = reps_of(args, full=3, quick=1)
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "h2load" if shutil.which("h2load") else "python"
    wait_for_quiet(args)
    print(
        f"load: {loadgen}, concurrency {CONCURRENCY}, batch 1, {duration:g} s runs after {warmup:g} s "
        f"warm-up, {reps} repetition(s)"
    )

    from mlmesh import tensor
    from mlmesh.data.fashion_mnist import load_fashion_mnist
    from mlmesh.serving.v1 import serving_pb2

    try:
        image = load_fashion_mnist("test", limit=1, allow_download=False)[0][0].astype(np.float32)
    except Exception:
        image = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.float32)
    request = serving_pb2.PredictRequest(model_name=MODEL, inputs={"image": tensor.to_proto(image[None])})
    json_body = json.dumps({"instances": [image.tolist()]}).encode()

    with scratch_dir(args, BENCHMARK) as run, Children(run) as kids:
        repo = run / "models"
        export = kids.start("export", role_argv(SCRIPT, "export", "--repo", str(repo)), wait=None)
        if export.proc.wait(300) != 0:
            raise RuntimeError(f"export failed:\n{export.log_tail()}")
        grpc_payload, json_payload = run / "predict.grpc", run / "predict.json"
        grpc_payload.write_bytes(grpc_frame(request.SerializeToString()))
        json_payload.write_bytes(json_body)

        baseline = kids.start(
            "baseline-server",
            role_argv(
                SCRIPT,
                "baseline-server",
                "--model-dir",
                str(repo / MODEL / "1"),
                "--port-file",
                str(run / "base.json"),
            ),
            port_file=run / "base.json",
            wait=None,
        )
        replicas = [
            kids.start(
                f"serving-{i}",
                service_argv(
                    "serving_svc", run / f"serving{i}.json", "--model-repo", str(repo), "--model-names", MODEL
                ),
                port_file=run / f"serving{i}.json",
                wait=None,
            )
            for i in range(2)
        ]
        for kid in (baseline, *replicas):
            kid.wait_port_file(180)
        gateway = kids.start(
            "gateway",
            service_argv(
                "gateway",
                run / "gateway.json",
                "--backends",
                ",".join(r.addr for r in replicas),
                "--work-dir",
                str(run / "gateway"),
            ),
            port_file=run / "gateway.json",
        )
        kids.also_kill(int(gateway.info["envoy_pid"]))

        # Same model, same answer, everywhere (and the gateway has admitted its replicas).
        want = wait_answers("baseline", lambda: predict_grpc(baseline.addr, request))
        for what, fn in (
            ("replica 0", lambda: predict_grpc(replicas[0].addr, request)),
            ("replica 1", lambda: predict_grpc(replicas[1].addr, request)),
            ("gateway gRPC", lambda: predict_grpc(gateway.addr, request)),
            ("gateway JSON", lambda: predict_json(gateway.addr, json_body)),
        ):
            got = wait_answers(what, fn)
            if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
                raise RuntimeError(f"{what} answered {got} but the baseline answered {want}")
        print(f"all servers answer the same probabilities for the test image (shape {list(want.shape)})")

        runs = {
            "a": (gateway.addr, PREDICT_PATH, grpc_payload, "grpc"),
            "b": (replicas[0].addr, PREDICT_PATH, grpc_payload, "grpc"),
            "c": (baseline.addr, PREDICT_PATH, grpc_payload, "grpc"),
            "json": (gateway.addr, f"/v1/models/{MODEL}:predict", json_payload, "json"),
        }
        results: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
        for rep in range(reps):
            for key, (target, path, payload, kind) in runs.items():
                if loadgen == "h2load":
                    res = run_h2load(target, path, payload, kind, duration, warmup, run / f"h2load-{key}.log")
                else:
                    res = run_pyload(target, payload, kind, duration, warmup)
                if res["failed"]:
                    raise RuntimeError(f"case {key}: {res['failed']} requests failed")
                lat = res["latencies"]
                row = {"rps": res["rps"], "p50": percentile(lat, 50) * 1e3, "p99": percentile(lat, 99) * 1e3}
                results[key].append(row)
                print(
                    f"  rep {rep + 1}: {key:4s} {row['rps']:8.1f} req/s  p50 {row['p50']:6.2f} ms  "
                    f"p99 {row['p99']:6.2f} ms  ({res['ok']} ok)",
                    flush=True,
                )

        # gRPC errors travel in trailers, which h2load does not read: ask the servers instead.
        # CANCELLED is the load generator hanging up on its in-flight requests when a run ends.
        codes: dict[str, float] = {}
        for r in replicas:
            for code, n in scrape_codes(
                r.info["metrics_port"], "mlmesh_grpc_requests_total", "Predict"
            ).items():
                codes[code] = codes.get(code, 0) + n
        for code, n in scrape_codes(baseline.info["metrics_port"], "bench_baseline_predict_total").items():
            codes[f"baseline {code}"] = n
        print(f"servers' Predict counters: {json.dumps(codes)}")
        cancelled = codes.get("CANCELLED", 0)
        bad = {c: n for c, n in codes.items() if c not in ("OK", "CANCELLED", "baseline OK")}
        if bad or cancelled > CONCURRENCY * 3 * reps:
            raise RuntimeError(f"Predict calls failed on the servers: {bad or codes}; see {run}/logs")

    m = {k: {f: median([r[f] for r in v]) for f in ("rps", "p50", "p99")} for k, v in results.items()}
    plain = "plain grpc.aio + tf.function, no batching"
    gw_grpc = "gRPC through the gateway"
    json_label = "HTTP/JSON through the gateway"
    cases = []
    for key, label in (("a", "(a) gateway + 2 replicas"), ("b", "(b) 1 replica direct")):
        cases += [
            Case(f"{label}: throughput", "requests/s", m[key]["rps"], plain, m["c"]["rps"]),
            Case(f"{label}: p50 latency", "ms", m[key]["p50"], plain, m["c"]["p50"]),
            Case(f"{label}: p99 latency", "ms", m[key]["p99"], plain, m["c"]["p99"]),
        ]
    cases += [
        Case(f"{json_label}: throughput", "requests/s", m["json"]["rps"], gw_grpc, m["a"]["rps"]),
        Case(f"{json_label}: p50 latency", "ms", m["json"]["p50"], gw_grpc, m["a"]["p50"]),
        Case(f"{json_label}: p99 latency", "ms", m["json"]["p99"], gw_grpc, m["a"]["p99"]),
    ]
    print_table(BENCHMARK, cases)
    print(
        f"machine: {machine_line()}; load {loadgen}, c={CONCURRENCY}, batch 1, {duration:g} s runs, "
        f"medians of {reps}; requests/s: ratio > 1 is better; latency: ratio < 1 is better"
    )
    write_json(args.json, BENCHMARK, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
