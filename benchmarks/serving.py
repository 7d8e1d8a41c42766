"""Serving: batch-1 Fashion-MNIST predictions through the gateway, against a minimal gRPC server
and against Ray Serve; p99 latency, p99 during a hot reload, and de-duplication.

    python benchmarks/serving.py --json benchmarks/results/serving.json [--quick] [--profile DIR]
        [--only CASE,...] [--replica-env KEY=VALUE]

One model for every server: a freshly initialised `mlmesh.models.fashion_cnn:build()` CNN,
exported by the trainer's own exporter (signature "serving_default", input "image" float32
[None,28,28], output "probabilities"). Every request is one real Fashion-MNIST test image.
Servers, all real processes on loopback:

- mlmesh: `python -m gateway` (Envoy) in front of 2 `python -m serving_svc` replicas at their
  default settings (dynamic batching). gRPC requests are mlmesh's own
  `mlmesh.serving.v1.ServingService/Predict`; JSON requests are
  `POST /v1/models/fashion:predict {"instances": [...]}` (Envoy's transcoder passes the JSON
  body through as google.api.HttpBody; the replica parses it).
- minimal: a plain `grpc.aio` server written here, implementing the same Predict RPC by calling
  the SavedModel's "serving_default" function once per request (no batching).
- Ray Serve (PyPI `ray[serve]`): 2 replicas of a deployment that loads the same SavedModel,
  `@serve.batch` (32 examples / 2 ms, as mlmesh), `max_ongoing_requests=64`, access log off,
  `RAY_worker_niceness=0`, HTTP proxy on 127.0.0.1, answering the same JSON body.

Cases (names as issue 7 checks them):

- gateway_c64: gRPC requests/s through Envoy at concurrency 64, vs minimal_unbatched_c64.
- p99_c16_ms: p99 latency (ms) of gRPC through Envoy at concurrency 16, vs the minimal server's.
- reload_p99: p99 of gRPC through Envoy (c16) over the requests started while a new version is
  exported into the repository (copied to a hidden temporary name, then renamed into place,
  as the trainer does) until both replicas answer with it plus 1 s (the old one unloads),
  vs the steady p99 of the same repetition (the p99_c16_ms run).
- dedup_10x: model executions for 10 concurrent requests carrying one `idempotency-key`
  through the gateway, summed over both replicas from their Prometheus counters
  (`mlmesh_serving_requests_total` delta: requests that reached a batch queue; model calls are
  printed too, but batching merges concurrent requests into one call even without
  de-duplication), vs the same 10 requests without a key (must be 10).
- vs_ray_serve_http_c16: JSON requests/s through Envoy vs Ray Serve's HTTP proxy, c16.

Load: h2load (Debian `nghttp2-client`), closed loop (one request in flight per connection), a
warm-up then a fixed measured duration; latencies from its per-request log. Every server's
answer is checked against the minimal server's before timing; after each run h2load's status
counts and the servers' own counters (h2load cannot see gRPC trailers) must show no failure.
Cases are interleaved per repetition (order rotated); figures are medians. With `--profile DIR`
the gRPC c64 and JSON c16 paths through the gateway are run again under py-spy (the replicas'
GIL holder) and under perf (replicas and Envoy, native code), with Envoy's admin stats
saved there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
    Case,
    Child,
    Children,
    CpuSampler,
    base_parser,
    child_env,
    free_port,
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

BENCHMARK = "serving"
SCRIPT = "serving.py"
MODEL = "fashion"
PREDICT_PATH = "/mlmesh.serving.v1.ServingService/Predict"
REST_PATH = f"/v1/models/{MODEL}:predict"
C_HIGH, C_LOW, DEDUP_N = 64, 16, 10
# The timed runs each reported case needs (a run shared by two cases is made once per repetition).
CASE_RUNS: dict[str, tuple[str, ...]] = {
    "gateway_c64": ("gateway_c64", "minimal_unbatched_c64"),
    "p99_c16_ms": ("gateway_c16", "minimal_unbatched_c16"),
    "reload_p99": ("gateway_c16", "reload"),
    "dedup_10x": ("dedup",),
    "vs_ray_serve_http_c16": ("gateway_http_c16", "ray_serve_http_c16"),
}
# Batching of the Ray Serve peer: the same limits as serving_svc's defaults.
RAY_MAX_BATCH, RAY_BATCH_WAIT_S = 32, 0.002
H2LOAD_MISSING = "h2load not found: apt-get install nghttp2-client (Debian/Ubuntu), or `make bench` as root"


# --- roles (child processes) ---------------------------------------------------------------


def role_export(args: argparse.Namespace) -> None:
    """Export a fresh fashion_cnn as <repo>/fashion/1 with the trainer's exporter."""
    import keras
    from mlmesh.models.fashion_cnn import build

    from trainer_svc.core import tfmodel
    from trainer_svc.core.export import export_saved_model

    keras.utils.set_random_seed(0)
    ms = build()
    path, _ = export_saved_model(ms, tfmodel.input_specs(ms), Path(args.repo), MODEL)
    print(f"exported {path}", file=sys.stderr)


def role_minimal_server(args: argparse.Namespace) -> None:
    """The baseline: grpc.aio, the SavedModel's signature called inline, once per request."""
    import asyncio

    import grpc
    import tensorflow as tf
    from mlmesh import tensor
    from mlmesh.server import write_port_file
    from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc
    from prometheus_client import Counter, start_http_server

    fn = tf.saved_model.load(args.model_dir).signatures["serving_default"]
    calls = Counter("bench_minimal_predict", "Predict calls answered", ["code"])

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
            except asyncio.CancelledError:
                calls.labels("CANCELLED").inc()
                raise
            except Exception:
                calls.labels("UNKNOWN").inc()
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


def role_ray_serve(args: argparse.Namespace) -> None:
    """Ray Serve on loopback: 2 batched replicas of the SavedModel behind Serve's HTTP proxy.

    Runs until SIGTERM (or the parent's death), then shuts Serve and Ray down.
    """
    import ray
    from mlmesh.server import write_port_file
    from ray import serve
    from starlette.requests import Request

    install_signal_handlers()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model_dir = args.model_dir
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            _temp_dir=args.ray_tmp,
            log_to_driver=False,
            configure_logging=False,
        )
        port = free_port()
        serve.start(
            http_options={"host": LOOPBACK, "port": port},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )

        @serve.deployment(
            num_replicas=2,
            max_ongoing_requests=64,
            ray_actor_options={"num_cpus": 1},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        class Fashion:
            def __init__(self, path: str) -> None:
                import tensorflow as tf

                self._tf = tf
                self._fn = tf.saved_model.load(path).signatures["serving_default"]

            @serve.batch(max_batch_size=RAY_MAX_BATCH, batch_wait_timeout_s=RAY_BATCH_WAIT_S)
            async def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
                sizes = [len(x) for x in images]
                out = self._fn(image=self._tf.constant(np.concatenate(images)))["probabilities"].numpy()
                return np.split(out, np.cumsum(sizes)[:-1])

            async def __call__(self, request: Request) -> dict[str, Any]:
                body = await request.json()
                images = np.asarray(body["instances"], dtype=np.float32)
                return {"predictions": (await self.predict(images)).tolist()}

        serve.run(Fashion.bind(model_dir), name=MODEL, route_prefix=REST_PATH)
        write_port_file(Path(args.port_file), {"port": port, "pid": os.getpid()})
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


# --- h2load ---------------------------------------------------------------------------------


@dataclass
class LoadRun:
    """One h2load run: its measured rate and per-request (start time s since epoch, latency s)."""

    rps: float
    ok: int
    failed: int
    statuses: dict[str, int]
    requests: list[tuple[float, float]]
    pid: int = 0
    t0: float = 0.0  # perf_counter bounds of the run, for CPU accounting
    t1: float = 0.0
    cpu_s: float = 0.0  # h2load's own CPU seconds (user + system)

    @property
    def latencies(self) -> list[float]:
        return [lat for _, lat in self.requests]

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1e3


def h2load_argv(
    url: str,
    payload: Path,
    kind: str,
    concurrency: int,
    log: Path,
    *,
    duration: float = 0.0,
    warmup: float = 0.0,
    requests: int = 0,
    headers: Sequence[str] = (),
) -> list[str]:
    cmd = ["h2load", "-c", str(concurrency), "-m", "1", "-t", "1", "-d", str(payload), "--log-file", str(log)]
    if requests:
        cmd += ["-n", str(requests)]
    else:
        cmd += ["-D", f"{duration:g}", "--warm-up-time", f"{warmup:g}"]
    if kind == "grpc":
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    else:
        cmd += ["--h1", "-H", "content-type: application/json"]
    for h in headers:
        cmd += ["-H", h]
    return [*cmd, url]


def run_h2load(argv: list[str], log: Path, timeout: float) -> LoadRun:
    """Run h2load to completion and parse its summary and per-request log."""
    log.unlink(missing_ok=True)
    # h2load's CPU: the reaped children's totals grow by it (no other child ends meanwhile).
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"h2load did not finish within {timeout:.0f}s: {' '.join(argv)}") from None
    t1 = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    m = re.search(r"finished in ([\d.]+)(?:s|ms|us), ([\d.]+) req/s", text)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if proc.returncode != 0 or not m or not r or not s:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {' '.join(argv)}\n{text}")
    reqs: list[tuple[float, float]] = []
    for line in log.read_text().splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[1] == "200":
            reqs.append((int(cols[0]) / 1e6, int(cols[2]) / 1e6))
    statuses = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, s.groups()), strict=True))
    failed = int(r.group(5)) + statuses["3xx"] + statuses["4xx"] + statuses["5xx"]
    return LoadRun(float(m.group(2)), int(r.group(4)), failed, statuses, reqs, proc.pid, t0, t1, cpu_s)


# --- answers and counters -------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def predict_grpc(addr: str, request: Any, metadata: Sequence[tuple[str, str]] = ()) -> tuple[np.ndarray, int]:
    from mlmesh import tensor
    from mlmesh.channels import sync_channel
    from mlmesh.serving.v1 import serving_pb2_grpc

    with sync_channel(addr) as channel:
        resp = serving_pb2_grpc.ServingServiceStub(channel).Predict(request, timeout=30, metadata=metadata)
    return np.array(tensor.from_proto(resp.outputs["probabilities"], "probabilities")), int(resp.version)


def predict_json(addr: str, body: bytes) -> np.ndarray:
    req = urllib.request.Request(
        f"http://{addr}{REST_PATH}", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return np.array(json.loads(resp.read())["predictions"], dtype=np.float32)


def wait_answers(what: str, fn: Callable[[], np.ndarray], timeout: float = 90.0) -> np.ndarray:
    """Retry until `fn` succeeds (the gateway admits replicas after health checks; Ray warms up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return np.asarray(fn())
        except Exception as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} never answered: {e}") from e
            time.sleep(0.5)


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=10) as resp:
        return str(resp.read().decode())


def samples(text: str, metric: str, **labels: str) -> dict[str, float]:
    """Samples of one Prometheus metric whose labels include `labels`, keyed by their label text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        key = line[len(metric) :].rsplit(" ", 1)[0]
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def by_label(text: str, metric: str, label: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in samples(text, metric, **labels).items():
        m = re.search(rf'{label}="([^"]*)"', key)
        name = m.group(1) if m else ""
        out[name] = out.get(name, 0.0) + value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


class Counters:
    """Server-side counters of the mlmesh replicas and the minimal server, read around each run."""

    def __init__(self, replicas: Sequence[Child], minimal: Child) -> None:
        self.replicas, self.minimal = replicas, minimal

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}

        def add(key: str, value: float) -> None:
            out[key] = out.get(key, 0.0) + value

        for r in self.replicas:
            text = scrape(r.info["metrics_port"])
            for code, n in by_label(text, "mlmesh_grpc_requests_total", "code", method="Predict").items():
                add(f"mlmesh {code}", n)
            add("requests", sum(samples(text, "mlmesh_serving_requests_total", model=MODEL).values()))
            add("model_calls", sum(samples(text, "mlmesh_serving_model_calls_total", model=MODEL).values()))
            for name in re.findall(r"^(mlmesh_\w*dedup\w*?)(?:_total)?[{ ]", text, flags=re.M):
                add(name, sum(samples(text, name).values()) + sum(samples(text, name + "_total").values()))
        for code, n in by_label(
            scrape(self.minimal.info["metrics_port"]), "bench_minimal_predict_total", "code"
        ).items():
            add(f"minimal {code}", n)
        return out


def failures(codes: dict[str, float]) -> dict[str, float]:
    """Server-side outcomes that are failures: anything but OK, and CANCELLED (h2load hanging up
    on its in-flight requests when a timed run ends; bounded by the caller)."""
    return {
        k: v
        for k, v in codes.items()
        if (k.startswith("mlmesh ") or k.startswith("minimal "))
        and k.split(" ", 1)[1] not in ("OK", "CANCELLED")
    }


def envoy_stats(admin_port: int, names: Sequence[str]) -> dict[str, float]:
    text = scrape(admin_port, "/stats?usedonly")
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name in names and value.strip().lstrip("-").isdigit():
            out[name] = float(value)
    return out


ENVOY_COUNTERS = (
    "cluster.serving.upstream_rq_retry",
    "cluster.serving.upstream_rq_retry_success",
    "cluster.serving.upstream_rq_5xx",
    "cluster.serving.upstream_rq_pending_overflow",
    "http.ingress_http.downstream_rq_5xx",
    "http.ingress_http.downstream_rq_4xx",
)


# --- processes ------------------------------------------------------------------------------


def session_pids(sid: int) -> list[int]:
    """Every live process in session `sid` (a child started with start_new_session leads one)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != b"Z":  # stat(5): session is field 6
            pids.append(int(entry))
    return pids


def pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (Ray's private temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found


@contextlib.contextmanager
def ray_cleanup(ray_tmp: Path, leader: list[int]) -> Iterator[None]:
    """After Ray's own shutdown, kill (by pid) any process still in the Ray child's session or
    naming its private temp dir, so no raylet, GCS or worker outlives the benchmark."""
    try:
        yield
    finally:

        def leftovers() -> list[int]:
            return sorted(set(pids_mentioning(str(ray_tmp))) | {p for s in leader for p in session_pids(s)})

        deadline = time.monotonic() + 10.0  # Ray's own shutdown may still be reaping its workers
        while (left := leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            with contextlib.suppress(OSError):
                print(f"ray: leftover {pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:120]!r}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if left:
            print(f"ray: killed {len(left)} leftover process(es) after shutdown: {left}")
        shutil.rmtree(ray_tmp, ignore_errors=True)


@dataclass
class Setup:
    run: Path
    kids: Children
    repo: Path
    minimal: Child
    replicas: list[Child]
    gateway: Child
    ray: Child | None  # started only when a Ray Serve case runs
    payload_grpc: Path
    payload_json: Path
    request: Any


def start_all(
    run: Path,
    kids: Children,
    ray_tmp: Path,
    ray_leader: list[int],
    with_ray: bool,
    replica_env: dict[str, str],
) -> tuple[Path, Child, list[Child], Child, Child | None]:
    repo = run / "models"
    export = kids.start("export", role_argv(SCRIPT, "export", "--repo", str(repo)), wait=None)
    if export.proc.wait(300) != 0:
        raise RuntimeError(f"export failed:\n{export.log_tail()}")
    v1 = repo / MODEL / "1"
    ray_env = child_env(RAY_AUTH_MODE="disabled", RAY_worker_niceness="0", RAY_USAGE_STATS_ENABLED="0")
    ray = None
    if with_ray:
        ray = start_ray(run, kids, v1, ray_tmp, ray_env)
        ray_leader.append(ray.proc.pid)
    minimal = kids.start(
        "minimal-server",
        role_argv(SCRIPT, "minimal-server", "--model-dir", str(v1), "--port-file", str(run / "minimal.json")),
        port_file=run / "minimal.json",
        wait=None,
    )
    replicas = [
        kids.start(
            f"serving-{i}",
            service_argv("serving_svc", run / f"serving{i}.json", "--model-repo", str(repo)),
            port_file=run / f"serving{i}.json",
            env=child_env(**replica_env),
            wait=None,
        )
        for i in range(2)
    ]
    for kid in (minimal, *replicas):
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
    if ray is not None:
        ray.wait_port_file(300)
    return repo, minimal, replicas, gateway, ray


def start_ray(run: Path, kids: Children, model_dir: Path, ray_tmp: Path, env: dict[str, str]) -> Child:
    return kids.start(
        "ray-serve",
        role_argv(
            SCRIPT,
            "ray-serve",
            "--model-dir",
            str(model_dir),
            "--port-file",
            str(run / "ray.json"),
            "--ray-tmp",
            str(ray_tmp),
        ),
        port_file=run / "ray.json",
        env=env,
        wait=None,
    )


# --- reload ---------------------------------------------------------------------------------


def export_copy(repo: Path, source_version: int) -> tuple[int, float]:
    """Publish a copy of a version as the next one: copy to a hidden name, rename into place.
    Returns (version, wall-clock time of the rename)."""
    model_dir = repo / MODEL
    version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) + 1
    tmp = model_dir / f".tmp-bench-{version}"
    shutil.copytree(model_dir / str(source_version), tmp)
    t = time.time()
    os.rename(tmp, model_dir / str(version))
    return version, t


def wait_version(replicas: Sequence[Child], request: Any, version: int, timeout: float) -> list[float]:
    """Poll each replica directly until it answers with `version`; wall-clock time of each switch."""
    from mlmesh.channels import sync_channel
    from mlmesh.serving.v1 import serving_pb2_grpc

    switched: list[float] = []
    deadline = time.monotonic() + timeout
    for r in replicas:
        with sync_channel(r.addr) as channel:
            stub = serving_pb2_grpc.ServingServiceStub(channel)
            while stub.Predict(request, timeout=30).version != version:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{r.name} did not serve version {version} within {timeout:.0f}s")
                time.sleep(0.02)
        switched.append(time.time())
    return switched


# --- profiling ------------------------------------------------------------------------------


def top_frames(raw: Path, n: int = 25) -> list[tuple[str, float]]:
    """Self-time share per function from py-spy's collapsed ("raw") output."""
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    return [(k, v / total) for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:n]] if total else []


def inclusive(raw: Path, needles: Sequence[str]) -> dict[str, float]:
    """Share of samples whose stack contains each needle (inclusive time)."""
    hits = dict.fromkeys(needles, 0)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for needle in needles:
            if needle in stack:
                hits[needle] += int(count)
    return {k: v / total for k, v in hits.items()} if total else {}


@dataclass
class Load:
    """What one h2load run sends: to which URL, which body, how, at what concurrency."""

    url: str
    payload: Path
    kind: str  # "grpc" or "json"
    concurrency: int


def profile_runs(s: Setup, out: Path, duration: float, warmup: float) -> None:
    """Where the time goes on the two paths the goals hinge on: gRPC through the gateway at c64
    (gateway_c64) and JSON through the gateway at c16 (the mlmesh side of vs_ray_serve_http_c16).

    For each: one run with py-spy sampling the replicas' GIL holder (--gil: the Python work that
    serialises a replica), one under `perf record` (replicas and Envoy, native code included);
    Envoy's admin stats around them. Everything is written to `out`; summaries are printed.
    """
    out.mkdir(parents=True, exist_ok=True)
    gw = s.gateway.addr
    for name, load in (
        ("grpc_c64", Load(f"http://{gw}{PREDICT_PATH}", s.payload_grpc, "grpc", C_HIGH)),
        ("json_c16", Load(f"http://{gw}{REST_PATH}", s.payload_json, "json", C_LOW)),
    ):
        sub = out / name
        sub.mkdir(exist_ok=True)
        admin = int(s.gateway.info["admin_port"])
        (sub / "envoy-stats-before.txt").write_text(scrape(admin, "/stats?usedonly"))
        pyspy_profile(s, name, load, sub, duration, warmup)
        perf_profile(s, name, load, sub, duration)
        (sub / "envoy-stats-after.txt").write_text(scrape(admin, "/stats?usedonly"))
    print(f"profile: raw stacks, perf reports and Envoy stats in {out}")


def pyspy_profile(s: Setup, name: str, load: Load, out: Path, duration: float, warmup: float) -> None:
    spy_bin = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not spy_bin:
        print("profile: py-spy not found (it comes with ray[serve]: pip install -e '.[bench]'); skipped")
        return
    spies = []
    for r in s.replicas:
        raw = out / f"{r.name}.pyspy.raw"
        argv = [
            *(spy_bin, "record", "--pid", str(r.info["pid"]), "--rate", "100", "--gil", "--nonblocking"),
            *("--duration", f"{duration + warmup:g}", "--format", "raw", "--output", str(raw)),
        ]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        spies.append((r, raw, spy))
    log = out / "h2load-pyspy.log"
    res = run_h2load(
        h2load_argv(
            load.url, load.payload, load.kind, load.concurrency, log, duration=duration, warmup=warmup
        ),
        log,
        duration + warmup + 60,
    )
    print(f"profile {name}: {res.rps:.0f} requests/s under py-spy (replicas' GIL holder sampled)")
    needles = (
        *("Servable.__call__", "_execute (serving_svc", "_instances", "prepare_instances"),
        *("map_from_proto", "map_to_proto", "intercept_service", "Predict (serving_svc"),
    )
    for r, raw, spy in spies:
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            print(f"profile {name}: py-spy on {r.name} failed: {err.strip()[-400:]}")
            continue
        print(f"  {r.name}, self time with the GIL (top 12):")
        for frame, share in top_frames(raw, 12):
            print(f"    {share * 100:5.1f}%  {frame}")
        share = inclusive(raw, needles)
        print("    inclusive: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in share.items()))


def perf_profile(s: Setup, name: str, load: Load, out: Path, duration: float) -> None:
    """CPU samples of the replicas and Envoy by thread and shared object (TensorFlow, gRPC core,
    CPython, the kernel) during one run."""
    perf = shutil.which("perf")
    if not perf:
        print("profile: perf not found; native profile skipped")
        return
    pids = [int(r.info["pid"]) for r in s.replicas] + [int(s.gateway.info["envoy_pid"])]
    data = out / "perf.data"
    rec = subprocess.Popen(
        [
            *(perf, "record", "-F", "499", "-p", ",".join(map(str, pids))),
            *("-o", str(data), "--", "sleep", f"{duration:g}"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = out / "h2load-perf.log"
    res = run_h2load(
        h2load_argv(load.url, load.payload, load.kind, load.concurrency, log, duration=duration, warmup=0),
        log,
        duration + 60,
    )
    _, err = rec.communicate(timeout=120)
    if rec.returncode != 0 or not data.exists():
        print(f"profile {name}: perf record failed: {err.strip()[-400:]}")
        return
    print(f"profile {name}: {res.rps:.0f} requests/s under perf; CPU samples of replicas + Envoy:")
    for sort, top in (("comm,dso", 14), ("dso,sym", 14)):
        report = subprocess.run(
            [
                *(perf, "report", "-i", str(data), "--stdio", "--no-children"),
                *("--sort", sort, "--percent-limit", "0.7"),
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        (out / f"perf-{sort.replace(',', '-')}.txt").write_text(report)
        lines = [line.strip() for line in report.splitlines() if line.strip() and not line.startswith("#")]
        print(f"  by {sort}: " + "; ".join(" ".join(line.split()) for line in lines[:top]))


# --- the driver -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=0, help="Measured seconds per run (0: 10, quick 3).")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="After the cases, profile the gRPC c64 and JSON c16 paths through the gateway into DIR.",
    )
    p.add_argument(
        "--replica-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra environment of the serving_svc replicas, to try a setting "
        "(e.g. TF_NUM_INTRAOP_THREADS=1); repeatable.",
    )
    p.add_argument(
        "--only",
        default="",
        help=f"Comma-separated cases to measure (default all): {', '.join(CASE_RUNS)}.",
    )
    for hidden in ("--repo", "--model-dir", "--port-file", "--ray-tmp"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    roles = {"export": role_export, "minimal-server": role_minimal_server, "ray-serve": role_ray_serve}
    if args.role:
        roles[args.role](args)
        return 0
    if not shutil.which("h2load"):
        print(H2LOAD_MISSING, file=sys.stderr)
        return 2
    only = [c.strip() for c in args.only.split(",") if c.strip()] or list(CASE_RUNS)
    if unknown := sorted(set(only) - set(CASE_RUNS)):
        p.error(f"--only: unknown case(s) {unknown}; choose from {list(CASE_RUNS)}")
    with_ray = "vs_ray_serve_http_c16" in only
    bad_env = [kv for kv in args.replica_env if "=" not in kv]
    if bad_env:
        p.error(f"--replica-env wants KEY=VALUE, got {bad_env}")
    replica_env = dict(kv.split("=", 1) for kv in args.replica_env)
    # Only the Ray child imports it; fail before starting anything.
    if with_ray and importlib.util.find_spec("ray") is None:
        print("ray[serve] not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2

    install_signal_handlers()
    reps = reps_of(args, full=3, quick=1)
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    reload_duration = max(duration, 10.0 if args.quick else 14.0)
    wait_for_quiet(args)
    if replica_env:
        print(f"serving_svc replicas run with {replica_env}")
    print(
        f"h2load closed loop, batch 1, {duration:g} s runs after {warmup:g} s warm-up, {reps} repetition(s)"
    )

    from mlmesh import tensor
    from mlmesh.data.fashion_mnist import load_fashion_mnist
    from mlmesh.serving.v1 import serving_pb2

    image = load_fashion_mnist("test", limit=1, allow_download=False)[0][0].astype(np.float32)
    request = serving_pb2.PredictRequest(model_name=MODEL, inputs={"image": tensor.to_proto(image[None])})
    json_body = json.dumps({"instances": [image.tolist()]}).encode()

    # Ray's unix sockets live under its temp dir, whose path must stay short (< 108 bytes).
    ray_tmp = Path(tempfile.mkdtemp(prefix="mlmesh-ray-"))
    ray_leader: list[int] = []
    with (
        ray_cleanup(ray_tmp, ray_leader),
        scratch_dir(args, BENCHMARK) as run,
        Children(run) as kids,
    ):
        repo, minimal, replicas, gateway, ray = start_all(
            run, kids, ray_tmp, ray_leader, with_ray, replica_env
        )
        payload_grpc, payload_json = run / "predict.grpc", run / "predict.json"
        payload_grpc.write_bytes(grpc_frame(request.SerializeToString()))
        payload_json.write_bytes(json_body)
        s = Setup(run, kids, repo, minimal, replicas, gateway, ray, payload_grpc, payload_json, request)
        result = measure(s, only, reps, duration, warmup, reload_duration)
        if args.profile is not None:
            profile_runs(s, args.profile, duration, warmup)
    report(args, only, result, reps, duration)
    return 0


def check_answers(s: Setup, json_body: bytes) -> None:
    """Same model, same answer everywhere (this also waits for the gateway to admit its replicas)."""
    want = wait_answers("minimal server", lambda: predict_grpc(s.minimal.addr, s.request)[0])
    for what, fn in (
        ("replica 0", lambda: predict_grpc(s.replicas[0].addr, s.request)[0]),
        ("replica 1", lambda: predict_grpc(s.replicas[1].addr, s.request)[0]),
        ("gateway gRPC", lambda: predict_grpc(s.gateway.addr, s.request)[0]),
        ("gateway JSON", lambda: predict_json(s.gateway.addr, json_body)),
        *([("Ray Serve JSON", lambda: predict_json(ray.addr, json_body))] if (ray := s.ray) else []),
    ):
        got = wait_answers(what, fn)
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
            raise RuntimeError(f"{what} answered {got} but the minimal server answered {want}")
    print(f"all servers answer the same probabilities for the test image (shape {list(want.shape)})")


def measure(
    s: Setup, only: Sequence[str], reps: int, duration: float, warmup: float, reload_duration: float
) -> dict[str, Any]:
    check_answers(s, s.payload_json.read_bytes())
    counters = Counters(s.replicas, s.minimal)
    admin = int(s.gateway.info["admin_port"])
    sampler = CpuSampler(0.2)
    sampler.watch("envoy", int(s.gateway.info["envoy_pid"]))
    for r in s.replicas:
        sampler.watch(r.name, int(r.info["pid"]))
    sampler.watch("minimal", int(s.minimal.info["pid"]))
    if s.ray is not None:
        ray_pids = session_pids(s.ray.proc.pid)
        for pid in ray_pids:
            sampler.watch(f"ray:{pid}", pid)
        print(f"Ray Serve: {len(ray_pids)} processes in its session")
    sampler.start()

    gw, mini = s.gateway.addr, s.minimal.addr
    ray = s.ray.addr if s.ray is not None else ""
    runs: dict[str, tuple[str, Path, str, int]] = {
        "gateway_c64": (f"http://{gw}{PREDICT_PATH}", s.payload_grpc, "grpc", C_HIGH),
        "minimal_unbatched_c64": (f"http://{mini}{PREDICT_PATH}", s.payload_grpc, "grpc", C_HIGH),
        "gateway_c16": (f"http://{gw}{PREDICT_PATH}", s.payload_grpc, "grpc", C_LOW),
        "minimal_unbatched_c16": (f"http://{mini}{PREDICT_PATH}", s.payload_grpc, "grpc", C_LOW),
        "gateway_http_c16": (f"http://{gw}{REST_PATH}", s.payload_json, "json", C_LOW),
        "ray_serve_http_c16": (f"http://{ray}{REST_PATH}", s.payload_json, "json", C_LOW),
    }
    wanted = {run for case in only for run in CASE_RUNS[case]}
    order = [k for k in (*runs, "reload", "dedup") if k in wanted]
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in order}
    loads: list[float] = []
    for rep in range(reps):
        shift = rep % len(order)
        loads.append(os.getloadavg()[0])
        print(f"rep {rep + 1}/{reps} (load average {loads[-1]:.2f})", flush=True)
        for key in order[shift:] + order[:shift]:
            before, env_before = counters.read(), envoy_stats(admin, ENVOY_COUNTERS)
            load = os.getloadavg()[0]
            if key == "dedup":
                row = run_dedup(s, counters, rep)
            else:
                if key == "reload":
                    res, extra = run_reload(s, reload_duration, warmup)
                else:
                    url, payload, kind, c = runs[key]
                    log = s.run / f"h2load-{key}.log"
                    res = run_h2load(
                        h2load_argv(url, payload, kind, c, log, duration=duration, warmup=warmup),
                        log,
                        duration + warmup + 120,
                    )
                    extra = {}
                if res.failed:
                    raise RuntimeError(f"{key}: h2load saw {res.failed} failures ({res.statuses})")
                time.sleep(sampler.interval * 1.5)  # a CPU sample after the run's end
                cpu = sampler.between(res.t0, res.t1)
                row = {"rps": res.rps, "ok": res.ok, "p50": res.p(50), "p99": res.p(99), **extra}
                # Over the whole h2load process (warm-up included), so per request at its rate.
                row.update(cpu_per_request({**cpu, "h2load": res.cpu_s}, res.rps * (res.t1 - res.t0)))
            codes = delta(counters.read(), before)
            retried = delta(envoy_stats(admin, ENVOY_COUNTERS), env_before)
            check_codes(key, codes, retried)
            row["load"] = load
            rows[key].append(row)
            print(f"  {key:22s} {fmt_row(row)}" + (f"  envoy {retried}" if retried else ""), flush=True)
    sampler.stop()
    return {"rows": rows, "loads": [*loads, os.getloadavg()[0]]}


def cpu_per_request(cpu: dict[str, float], requests: float) -> dict[str, float]:
    """CPU ms per request, grouped: envoy, replicas, minimal, ray (all its processes)."""
    groups: dict[str, float] = {}
    for name, sec in cpu.items():
        group = "ray" if name.startswith("ray:") else "replicas" if name.startswith("serving-") else name
        groups[group] = groups.get(group, 0.0) + sec
    return {f"cpu_ms_{g}": v * 1e3 / requests for g, v in groups.items()} if requests else {}


def fmt_row(row: dict[str, Any]) -> str:
    if "executions" in row:
        return (
            f"with key {row['executions']:.0f} executions ({row['model_calls']:.0f} model calls); "
            f"without key {row['executions_nokey']:.0f} ({row['model_calls_nokey']:.0f} model calls)"
            + (f"; dedup metrics {row['dedup_metrics']}" if row.get("dedup_metrics") else "")
            + f"  load {row['load']:.1f}"
        )
    text = (
        f"{row['rps']:8.1f} req/s  p50 {row['p50']:6.2f} ms  p99 {row['p99']:6.2f} ms  load {row['load']:.1f}"
    )
    if "window_p99" in row:
        text += (
            f"  | reload window {row['window_s']:.1f} s, {row['window_n']:.0f} req, "
            f"p99 {row['window_p99']:.2f} ms"
        )
    cpu = [
        f"{k.removeprefix('cpu_ms_')} {v:.2f}"
        for k, v in row.items()
        if k.startswith("cpu_ms_") and v >= 0.005
    ]
    return text + ("  | CPU ms/req: " + ", ".join(cpu) if cpu else "")


def check_codes(key: str, codes: dict[str, float], envoy: dict[str, float]) -> None:
    """No request failed on the servers. UNAVAILABLE from a draining version counts only if
    Envoy retried it successfully (the client never saw it); CANCELLED is h2load hanging up on
    its in-flight requests when a timed run ends (at most one per connection)."""
    bad = failures(codes)
    unavailable = bad.pop("mlmesh UNAVAILABLE", 0.0)
    if unavailable > envoy.get("cluster.serving.upstream_rq_retry_success", 0.0):
        bad["mlmesh UNAVAILABLE (not retried)"] = unavailable
    cancelled = sum(v for k, v in codes.items() if k.endswith(" CANCELLED"))
    if cancelled > C_HIGH:
        bad["CANCELLED"] = cancelled
    if envoy.get("http.ingress_http.downstream_rq_5xx") or envoy.get("http.ingress_http.downstream_rq_4xx"):
        bad["envoy 4xx/5xx"] = envoy.get("http.ingress_http.downstream_rq_5xx", 0) + envoy.get(
            "http.ingress_http.downstream_rq_4xx", 0
        )
    if bad:
        raise RuntimeError(f"{key}: requests failed on the servers: {bad} (all counters: {codes})")


def run_reload(s: Setup, duration: float, warmup: float) -> tuple[LoadRun, dict[str, float]]:
    """gRPC c16 through the gateway while a new version is published and loaded by both replicas."""
    log = s.run / "h2load-reload.log"
    argv = h2load_argv(
        f"http://{s.gateway.addr}{PREDICT_PATH}",
        s.payload_grpc,
        "grpc",
        C_LOW,
        log,
        duration=duration,
        warmup=warmup,
    )
    box: dict[str, Any] = {}

    def load() -> None:
        try:
            box["res"] = run_h2load(argv, log, duration + warmup + 120)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=load, daemon=True)
    started = time.time()
    thread.start()
    time.sleep(warmup + 1.0)
    source = max(int(p.name) for p in (s.repo / MODEL).iterdir() if p.name.isdigit())
    version, t_rename = export_copy(s.repo, source)
    switched = wait_version(s.replicas, s.request, version, timeout=duration)
    t_end = max(switched) + 1.0  # the old version drains and unloads after the switch
    thread.join(duration + warmup + 150)
    if "error" in box:
        raise box["error"]
    res: LoadRun = box["res"]
    last_start = max(t for t, _ in res.requests)
    if t_end > last_start:
        raise RuntimeError(
            f"reload: the window ends {t_end - started:.1f} s into a {duration + warmup:g} s run; "
            "raise --duration"
        )
    window = [lat for t, lat in res.requests if t_rename <= t <= t_end]
    extra = {
        "window_p99": percentile(window, 99) * 1e3,
        "window_s": t_end - t_rename,
        "window_n": float(len(window)),
        "switch_s": max(switched) - t_rename,
    }
    return res, extra


def run_dedup(s: Setup, counters: Counters, rep: int) -> dict[str, Any]:
    """10 concurrent requests through the gateway with one idempotency key, then 10 without."""
    out: dict[str, Any] = {}
    url = f"http://{s.gateway.addr}{PREDICT_PATH}"
    for suffix, headers in (
        ("", [f"idempotency-key: bench-{os.getpid()}-{rep}-{time.time_ns()}"]),
        ("_nokey", []),
    ):
        log = s.run / f"h2load-dedup{suffix}.log"
        before = counters.read()
        res = run_h2load(
            h2load_argv(url, s.payload_grpc, "grpc", DEDUP_N, log, requests=DEDUP_N, headers=headers), log, 60
        )
        d = delta(counters.read(), before)
        if res.failed or res.ok != DEDUP_N:
            raise RuntimeError(
                f"dedup{suffix}: {res.ok} of {DEDUP_N} answered, {res.failed} failed: {res.statuses}"
            )
        if suffix == "_nokey" and d.get("mlmesh OK", 0) != DEDUP_N:
            raise RuntimeError(f"dedup{suffix}: replicas answered {d} for {DEDUP_N} requests")
        out[f"executions{suffix}"] = d.get("requests", 0.0)
        out[f"model_calls{suffix}"] = d.get("model_calls", 0.0)
        if not suffix:
            out["dedup_metrics"] = {k: v for k, v in d.items() if "dedup" in k}
    return out


def report(
    args: argparse.Namespace, only: Sequence[str], result: dict[str, Any], reps: int, duration: float
) -> None:
    rows, loads = result["rows"], result["loads"]

    def med(key: str, f: str) -> float:
        return median([r[f] for r in rows[key]])

    cases: list[Case] = []
    if "gateway_c64" in only:
        cases.append(
            Case(
                "gateway_c64",
                "requests/s",
                med("gateway_c64", "rps"),
                "minimal_unbatched_c64",
                med("minimal_unbatched_c64", "rps"),
                note="goal ratio >= 2",
            )
        )
    if "p99_c16_ms" in only:
        cases.append(
            Case(
                "p99_c16_ms",
                "ms",
                med("gateway_c16", "p99"),
                "minimal_unbatched_c16_p99_ms",
                med("minimal_unbatched_c16", "p99"),
                note="goal value <= 25 ms",
            )
        )
    if "reload_p99" in only:
        window, switch = med("reload", "window_s"), med("reload", "switch_s")
        cases.append(
            Case(
                "reload_p99",
                "ms",
                med("reload", "window_p99"),
                "steady_p99_c16_ms",
                med("gateway_c16", "p99"),
                note=f"goal ratio <= 1.5; reload window {window:.1f} s (both replicas switched "
                f"{switch:.1f} s after the rename)",
            )
        )
    if "dedup_10x" in only:
        cases.append(
            Case(
                "dedup_10x",
                "executions",
                med("dedup", "executions"),
                "no_key_10x",
                med("dedup", "executions_nokey"),
                note="goal value 1 (requests reaching a replica's batch queue, summed over both replicas)",
            )
        )
    if "vs_ray_serve_http_c16" in only:
        cases.append(
            Case(
                "vs_ray_serve_http_c16",
                "requests/s",
                med("gateway_http_c16", "rps"),
                "ray_serve_http_c16",
                med("ray_serve_http_c16", "rps"),
                note="goal ratio >= 4",
            )
        )
    print_table(BENCHMARK, cases)
    print("medians per run (p50/p99 ms, 1-min load average at the run's start, CPU ms per request):")
    for key, rs in rows.items():
        if key == "dedup":
            continue
        m = {f: median([r[f] for r in rs if f in r]) for f in rs[0] if isinstance(rs[0][f], float)}
        print(f"  {key:22s} {fmt_row(m)}")
    print(
        f"machine: {machine_line()}; load average (1 min) at each repetition's start and at the end: "
        + ", ".join(f"{x:.2f}" for x in loads)
        + f"; h2load c={C_HIGH}/{C_LOW}, {duration:g} s runs, medians of {reps}"
    )
    write_json(args.json, BENCHMARK, cases)


if __name__ == "__main__":
    sys.exit(main())
