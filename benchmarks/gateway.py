"""Gateway: Envoy's cost per request, failover without failed requests, and how fast a new replica
takes traffic, with Envoy configured by mlmesh's xDS control plane from the file registry.

    python benchmarks/gateway.py --json benchmarks/results/gateway.json [--quick] [--reps N]

Real processes on loopback: `python -m serving_svc --registry file://...` replicas serving one
freshly initialised Fashion-MNIST CNN (exported by the trainer's exporter, as in serving.py),
the control plane `python -m gateway.xds --registry file://...` and the launcher
`python -m gateway --xds-addr ...` running Envoy. Load from h2load (Debian `nghttp2-client`).

Cases (names as issue 8 checks them):

- envoy_grpc_c16: gRPC Predict requests/s through Envoy to one replica vs the same h2load run
  straight at that replica (closed loop, c16, runs alternated, medians). Goal ratio >= 0.8.
- failover_failed_requests: 3 replicas, REST predict through Envoy at a fixed rate (h2load
  --rps; REST so that every failure is an HTTP status h2load can count: a gRPC error travels
  in trailers it does not read) for 10 s; one replica is killed (SIGKILL) after 3 s. Value:
  requests that failed (non-2xx or reset), baseline: requests sent. Goal value 0. The killed
  replica is restarted after each run and must take traffic again (checked, printed).
- scale_up_seconds: a new replica starts under a light load through Envoy; from its SERVING
  (the port file it writes once SERVING) to the first request it serves through Envoy (its
  own request counter, polled every 10 ms). Baseline: from SERVING until the registry lists
  it healthy (a watcher in the benchmark, the control plane's input). Goal value <= 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
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
    service_argv,
    wait_for_quiet,
    write_json,
)
from serving import (
    H2LOAD_MISSING,
    MODEL,
    PREDICT_PATH,
    REST_PATH,
    grpc_frame,
    h2load_argv,
    predict_grpc,
    predict_json,
    run_h2load,
    samples,
    scrape,
    wait_answers,
)

BENCHMARK = "gateway"
C = 16
FAILOVER_SECONDS, KILL_AFTER_SECONDS = 10.0, 3.0
FAILOVER_CLIENTS, FAILOVER_RPS_PER_CLIENT = 4, 50  # 200 requests/s in all
SCALE_LOAD_RPS = 50


@dataclass
class Mesh:
    run: Path
    kids: Children
    repo: Path
    registry: str
    replicas: list[Child]
    control: Child
    gateway: Child

    def start_replica(self, i: int) -> Child:
        port_file = self.run / f"serving{i}.json"
        return self.kids.start(
            f"serving-{i}",
            service_argv(
                "serving_svc", port_file, "--model-repo", str(self.repo), "--registry", self.registry
            ),
            port_file=port_file,
            wait=None,
        )


def start_mesh(run: Path, kids: Children) -> Mesh:
    repo = run / "models"
    export = kids.start("export", role_argv("serving.py", "export", "--repo", str(repo)), wait=None)
    if export.proc.wait(300) != 0:
        raise RuntimeError(f"export failed:\n{export.log_tail()}")
    registry = f"file://{run / 'registry'}"
    control = kids.start(
        "xds",
        service_argv("gateway.xds", run / "xds.json", "--registry", registry),
        port_file=run / "xds.json",
    )
    gateway = kids.start(
        "gateway",
        service_argv(
            "gateway", run / "gateway.json", "--xds-addr", control.addr, "--work-dir", str(run / "gateway")
        ),
        port_file=run / "gateway.json",
    )
    kids.also_kill(int(gateway.info["envoy_pid"]))
    mesh = Mesh(run, kids, repo, registry, [], control, gateway)
    first = mesh.start_replica(0)
    first.wait_port_file(180)
    mesh.replicas.append(first)
    return mesh


def predict_count(replica: Child) -> float:
    """Predict calls the replica has answered (its own Prometheus counter)."""
    text = scrape(int(replica.info["metrics_port"]))
    return sum(
        v
        for k, v in samples(text, "mlmesh_grpc_requests_total").items()
        if 'method="Predict"' in k or 'method="RestPredict"' in k
    )


@contextlib.contextmanager
def background_load(
    url: str, payload: Path, kind: str, rps: int, seconds: float, log: Path
) -> Iterator[None]:
    """A fixed-rate h2load run in a thread for the `with` block (bounded by `seconds`)."""
    argv = h2load_argv(url, payload, kind, 1, log, duration=seconds)
    argv[1:1] = ["--rps", str(rps)]
    result: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("run", run_h2load(argv, log, seconds + 60)), daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        thread.join(seconds + 90)


# --- cases ------------------------------------------------------------------------------------


def measure_envoy_overhead(mesh: Mesh, payload: Path, reps: int, duration: float, warmup: float) -> Case:
    direct, through = [], []
    targets = {"direct": mesh.replicas[0].addr, "envoy": mesh.gateway.addr}
    for rep in range(reps):
        order = ["direct", "envoy"] if rep % 2 == 0 else ["envoy", "direct"]
        for key in order:
            log = mesh.run / f"h2load-{key}.log"
            res = run_h2load(
                h2load_argv(f"http://{targets[key]}{PREDICT_PATH}", payload, "grpc", C, log,
                            duration=duration, warmup=warmup),
                log,
                duration + warmup + 120,
            )  # fmt: skip
            if res.failed:
                raise RuntimeError(f"{key}: h2load saw {res.failed} failures ({res.statuses})")
            (direct if key == "direct" else through).append(res.rps)
            load = os.getloadavg()[0]
            print(f"  {key:7s} c{C}: {res.rps:8.1f} req/s  p99 {res.p(99):6.1f} ms  load {load:.1f}")
    return Case(
        "envoy_grpc_c16",
        "requests/s",
        median(through),
        "direct_one_replica_c16",
        median(direct),
        note=f"through Envoy {[round(x) for x in through]}, direct {[round(x) for x in direct]}; "
        "goal ratio >= 0.8",
    )


def measure_scale_up(mesh: Mesh, json_payload: Path, new: int) -> Case:
    spans, registry_spans = [], []
    seconds = 40.0 * new + 30
    url = f"http://{mesh.gateway.addr}{REST_PATH}"
    with background_load(url, json_payload, "json", SCALE_LOAD_RPS, seconds, mesh.run / "h2load-scale.log"):
        for _ in range(new):
            i = len(mesh.replicas)
            replica = mesh.start_replica(i)
            replica.wait_port_file(180)
            assert replica.port_file is not None
            serving_at = replica.port_file.stat().st_mtime  # written once SERVING
            registered = asyncio.run(
                _registry_lists(mesh.registry, f"127.0.0.1:{replica.info['port']}", 30.0)
            )
            deadline = time.monotonic() + 30
            while predict_count(replica) == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serving-{i} took no request through Envoy within 30 s")
                time.sleep(0.01)
            first_at = time.time()
            mesh.replicas.append(replica)
            spans.append(first_at - serving_at)
            registry_spans.append(registered - serving_at)
            print(
                f"  serving-{i}: registry lists it {registered - serving_at:.2f} s after SERVING, "
                f"first request through Envoy after {first_at - serving_at:.2f} s"
            )
    return Case(
        "scale_up_seconds",
        "s",
        median(spans),
        "registry_healthy_seconds",
        median(registry_spans),
        note=f"per new replica {[round(s, 2) for s in spans]} s; goal value <= 2 s",
    )


async def _registry_lists(url: str, addr: str, timeout: float) -> float:
    """Wall-clock time at which the registry first lists `addr` as a healthy serving instance."""
    from mlmesh.discovery import open_registry

    registry = open_registry(url)
    try:
        async with asyncio.timeout(timeout):
            async for instances in registry.watch("serving"):
                if any(i.addr == addr for i in instances):
                    return time.time()
    finally:
        await registry.close()
    raise RuntimeError(f"the registry never listed {addr}")


def measure_failover(mesh: Mesh, json_payload: Path, reps: int) -> Case:
    failed, sent = [], []
    for rep in range(reps):
        victim = mesh.replicas[1 + rep % (len(mesh.replicas) - 1)]
        log = mesh.run / "h2load-failover.log"
        argv = h2load_argv(
            f"http://{mesh.gateway.addr}{REST_PATH}",
            json_payload,
            "json",
            FAILOVER_CLIENTS,
            log,
            duration=FAILOVER_SECONDS,
        )
        argv[1:1] = ["--rps", str(FAILOVER_RPS_PER_CLIENT)]
        killer = threading.Timer(KILL_AFTER_SECONDS, lambda v=victim: os.kill(v.proc.pid, signal.SIGKILL))
        killer.start()
        try:
            res = run_h2load(argv, log, FAILOVER_SECONDS + 120)
        finally:
            killer.cancel()
        failed.append(res.failed)
        sent.append(res.ok + res.failed)
        print(
            f"  rep {rep + 1}: killed {victim.name} after {KILL_AFTER_SECONDS:g} s: "
            f"{res.failed} failed of {res.ok + res.failed} ({res.statuses}), p99 {res.p(99):.1f} ms"
        )
        # Its restart (a new process, registered again) must bring it back into rotation.
        victim.proc.wait(10)
        index = mesh.replicas.index(victim)
        back = mesh.start_replica(int(victim.name.rsplit("-", 1)[1]))
        back.wait_port_file(180)
        mesh.replicas[index] = back
        before = predict_count(back)
        wait_answers(
            f"{back.name} back in rotation",
            lambda b=back, n=before: _served_since(mesh, b, n),
            timeout=60,
        )
        print(f"  {back.name} restarted and takes traffic through Envoy again")
    return Case(
        "failover_failed_requests",
        "requests",
        float(sum(failed)),
        "requests_sent",
        float(sum(sent)),
        note=f"per run {failed} failed; {FAILOVER_CLIENTS * FAILOVER_RPS_PER_CLIENT} req/s, one of "
        f"{len(mesh.replicas)} replicas SIGKILLed {KILL_AFTER_SECONDS:g} s into {FAILOVER_SECONDS:g} s; "
        "goal 0",
    )


def _served_since(mesh: Mesh, replica: Child, before: float) -> np.ndarray:
    for _ in range(20):
        predict_json(mesh.gateway.addr, (mesh.run / "predict.json").read_bytes())
        if predict_count(replica) > before:
            return np.zeros(1)
    raise RuntimeError(f"{replica.name} got none of 20 requests")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=0, help="Measured seconds per run (0: 10, quick 3).")
    args = p.parse_args(argv)
    if not shutil.which("h2load"):
        print(H2LOAD_MISSING, file=sys.stderr)
        return 2
    install_signal_handlers()
    reps = reps_of(args, full=3, quick=1)
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    wait_for_quiet(args)
    loads = [os.getloadavg()[0]]

    from mlmesh import tensor
    from mlmesh.data.fashion_mnist import load_fashion_mnist
    from mlmesh.serving.v1 import serving_pb2

    image = load_fashion_mnist("test", limit=1, allow_download=False)[0][0].astype(np.float32)
    request = serving_pb2.PredictRequest(model_name=MODEL, inputs={"image": tensor.to_proto(image[None])})
    with scratch_dir(args, BENCHMARK) as run, Children(run) as kids:
        mesh = start_mesh(run, kids)
        payload_grpc, payload_json = run / "predict.grpc", run / "predict.json"
        payload_grpc.write_bytes(grpc_frame(request.SerializeToString()))
        payload_json.write_bytes(json.dumps({"instances": [image.tolist()]}).encode())
        want = wait_answers("replica 0", lambda: predict_grpc(mesh.replicas[0].addr, request)[0])
        got = wait_answers("gateway", lambda: predict_grpc(mesh.gateway.addr, request)[0])
        if not np.allclose(got, want, atol=1e-5):
            raise RuntimeError(f"the gateway answered {got}, the replica {want}")

        print(
            f"envoy_grpc_c16: h2load closed loop, {duration:g} s runs after {warmup:g} s warm-up, {reps} reps"
        )
        cases = [measure_envoy_overhead(mesh, payload_grpc, reps, duration, warmup)]
        loads.append(os.getloadavg()[0])
        print(f"scale_up_seconds: 2 new replicas under {SCALE_LOAD_RPS} req/s through Envoy")
        cases.append(measure_scale_up(mesh, payload_json, 2))
        loads.append(os.getloadavg()[0])
        print(f"failover_failed_requests: {reps} run(s)")
        cases.append(measure_failover(mesh, payload_json, reps))
        loads.append(os.getloadavg()[0])
    cases = [cases[0], cases[2], cases[1]]
    print_table(BENCHMARK, cases)
    print(f"machine: {machine_line()}; load average (1 min) at start and after each case: {loads}")
    write_json(args.json, BENCHMARK, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
