"""Bulk transfer through one parameter-server shard: push + pull of a 16 MB float32 variable with
the trainer's own client, against a plain gRPC byte stream of the same size.

    python benchmarks/ps_bandwidth.py --json benchmarks/results/ps_bandwidth.json [--quick]

- mlmesh: one `python -m paramserver_svc --num-shards 1` holding a float32 [1024, 4096] variable
  (4,194,304 floats, 16 MiB) with SGD, driven by `trainer_svc.clients.ParamClient` (grpc.aio)
  from its own process. An iteration is one Push of a 16 MiB gradient (applied: validated,
  checked for NaN/Inf, SGD - chunk by chunk as the stream arrives) then one Pull of the
  variable: a worker step of a model that big, without the overlap. Both travel as the worker
  sends them: chunked streams (PushStream, PullStream) for tensors of several MiB, malloc
  keeping big blocks in both processes.
- baseline: a plain grpc.aio server/client pair moving the same 16 MiB each way as a stream of
  1 MiB raw-bytes messages (no protobuf), the fastest honest configuration on this machine
  (FIELD-NOTES: ~1 GB/s streamed vs ~150 MB/s as one message). The server copies a push into
  its buffer and streams a pull out of a fresh copy, so it does the copies a store must do,
  and none of the arithmetic.
- analysis rows (where mlmesh's time goes): the same plain pair with one 16 MiB message each
  way (message size); mlmesh with glibc's malloc told to keep big blocks
  (`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`: fresh 16 MiB buffers page-fault here);
  and the per-step work of each layer measured in one process (protobuf encode/decode, the
  shard's own push - assembled, and streamed as PushStream applies it - and pull, the
  thread-pool hop) against a 16 MiB memcpy.

Figures: medians of per-iteration times over repetitions, systems interleaved per repetition;
rates in MB/s with MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
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
    child_env,
    install_signal_handlers,
    machine_line,
    median,
    print_table,
    proc_stat,
    reps_of,
    role_argv,
    scratch_dir,
    serve_commands,
    service_argv,
    wait_for_quiet,
    write_json,
)

BENCHMARK = "ps_bandwidth"
SCRIPT = "ps_bandwidth.py"
JOB, VAR, WORKER = "bandwidth", "big", "bench"
SHAPE = (1024, 4096)
NBYTES = SHAPE[0] * SHAPE[1] * 4
CHUNK = 1 << 20
MAX_MESSAGE = 64 << 20
LR, GRAD = 1.0, 1e-3  # every push subtracts exactly GRAD from every element: checkable
# Keep freed blocks of up to 256 MiB in malloc's heap instead of returning them to the kernel
# (and page-faulting them back in on the next message).
TUNED_MALLOC = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"
CALL_TIMEOUT = 600.0
SYSTEMS = ("mlmesh", "grpc_stream", "grpc_stream_tuned", "grpc_unary", "grpc_unary_tuned", "mlmesh_tuned")


# --- the plain gRPC pair ---------------------------------------------------------------------

_PUSH, _PULL = "/bench.Bytes/Push", "/bench.Bytes/Pull"
_PUSH_ONE, _PULL_ONE = "/bench.Bytes/PushOne", "/bench.Bytes/PullOne"
_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


def role_bytes_server(args: argparse.Namespace) -> None:
    import grpc
    from mlmesh.server import write_port_file

    store = np.zeros(NBYTES, dtype=np.uint8)

    async def push(requests: AsyncIterator[bytes], context: Any) -> bytes:
        offset = 0
        async for chunk in requests:
            store[offset : offset + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            offset += len(chunk)
        return b""

    async def pull(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for start in range(0, NBYTES, CHUNK):
            yield store[start : start + CHUNK].tobytes()

    async def push_one(request: bytes, context: Any) -> bytes:
        store[:] = np.frombuffer(request, dtype=np.uint8)
        return b""

    async def pull_one(request: bytes, context: Any) -> bytes:
        return store.tobytes()

    async def serve() -> None:
        server = grpc.aio.server(options=_OPTIONS)
        handlers = {
            "Push": grpc.stream_unary_rpc_method_handler(push),
            "Pull": grpc.unary_stream_rpc_method_handler(pull),
            "PushOne": grpc.unary_unary_rpc_method_handler(push_one),
            "PullOne": grpc.unary_unary_rpc_method_handler(pull_one),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Bytes", handlers)])
        port = server.add_insecure_port(f"{LOOPBACK}:0")
        await server.start()
        write_port_file(Path(args.port_file), {"port": port, "pid": os.getpid()})
        await server.wait_for_termination()

    asyncio.run(serve())


class GrpcClient:
    """Raw bytes (identity serializers) over one channel; `streamed` picks 1 MiB chunks or one message."""

    def __init__(self, addr: str, streamed: bool) -> None:
        import grpc

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.channel = grpc.aio.insecure_channel(addr, options=_OPTIONS)
        self.streamed = streamed
        self.push_call = self.channel.stream_unary(_PUSH) if streamed else self.channel.unary_unary(_PUSH_ONE)
        self.pull_call = self.channel.unary_stream(_PULL) if streamed else self.channel.unary_unary(_PULL_ONE)
        self.grad = np.full(SHAPE, GRAD, dtype=np.float32)
        self.value = np.empty(SHAPE, dtype=np.float32)
        self.pushes = 0

    async def push(self) -> None:
        raw = self.grad.reshape(-1).view(np.uint8)
        if not self.streamed:
            await self.push_call(raw.tobytes(), timeout=60)
            return

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, NBYTES, CHUNK):
                yield raw[start : start + CHUNK].tobytes()

        await self.push_call(chunks(), timeout=60)

    async def pull(self) -> np.ndarray:
        out = self.value.reshape(-1).view(np.uint8)
        if not self.streamed:
            out[:] = np.frombuffer(await self.pull_call(b"", timeout=60), dtype=np.uint8)
            return self.value
        offset = 0
        async for chunk in self.pull_call(b"", timeout=60):
            out[offset : offset + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            offset += len(chunk)
        if offset != NBYTES:
            raise RuntimeError(f"pulled {offset} bytes, expected {NBYTES}")
        return self.value

    def check(self, pulled: np.ndarray, pushes: int) -> None:
        if not np.array_equal(pulled, self.grad):
            raise RuntimeError("the plain server returned other bytes than were pushed")


# --- the mlmesh client -----------------------------------------------------------------------


class MlmeshClient:
    """The trainer's own ParamClient against one shard. The protocol-specific part of this file."""

    def __init__(self, addr: str) -> None:
        from mlmesh.memory import keep_large_blocks

        from trainer_svc.clients import CallPolicy, ParamClient
        from trainer_svc.core.types import OptimizerConfig, VariableSpec

        keep_large_blocks()  # as a trainer worker process does (mlmesh.server.run_service)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # grpc.aio channels bind to the loop current at creation
        self.params = ParamClient(
            [addr], CallPolicy(timeout=60, retry_seconds=5, max_message_bytes=MAX_MESSAGE)
        )
        self.grad = np.full(SHAPE, GRAD, dtype=np.float32)
        self.step = self.pushes = 0
        spec = VariableSpec(VAR, "float32", SHAPE, False, np.zeros(SHAPE, dtype=np.float32))
        self.loop.run_until_complete(self.params.register(0, JOB, [spec], OptimizerConfig("sgd", LR)))

    async def push(self) -> None:
        self.step += 1
        if not await self.params.push(0, JOB, WORKER, self.step, {VAR: self.grad}, {}):
            raise RuntimeError(f"push of step {self.step} was not applied")

    async def pull(self) -> np.ndarray:
        # A worker streams the pulls of a shard whose answers are this big (PullStream);
        # pushes of >= 4 MiB stream on their own.
        return (await self.params.pull(0, JOB, [VAR], {}, stream=True)).dense[VAR]

    def check(self, pulled: np.ndarray, pushes: int) -> None:
        expected = np.float32(-GRAD * pushes)
        if pulled.shape != SHAPE or not np.allclose(pulled, expected, rtol=1e-3, atol=1e-6):
            raise RuntimeError(f"after {pushes} pushes the variable is {pulled.ravel()[:3]}, not {expected}")


def role_client(args: argparse.Namespace) -> None:
    client: Any = (
        MlmeshClient(args.addr) if args.system == "mlmesh" else GrpcClient(args.addr, args.system == "stream")
    )

    async def run(iters: int) -> dict[str, Any]:
        push, pull = [], []
        for _ in range(iters):
            t0 = time.perf_counter()
            await client.push()
            t1 = time.perf_counter()
            pulled = await client.pull()
            push.append(t1 - t0)
            pull.append(time.perf_counter() - t1)
            client.pushes += 1
        client.check(pulled, client.pushes)
        return {"push": push, "pull": pull}

    serve_commands(lambda msg: client.loop.run_until_complete(run(int(msg["iters"]))))


# --- analysis: each layer's work per 16 MiB, in one process ------------------------------------


def role_probe(args: argparse.Namespace) -> None:
    """Times, per 16 MiB push or pull, what each layer does to the bytes - the same calls the
    client and servicer make, without the network. Uses paramserver_svc internals (the shard
    core, the servicer's encoder): adjust with the protocol."""
    from mlmesh import tensor
    from mlmesh.paramserver.v1 import paramserver_pb2 as pb

    from paramserver_svc.core.shard import Shard
    from paramserver_svc.core.specs import InitSpec, OptimizerConfig, VarSpec
    from paramserver_svc.servicer import _fill

    grad = np.full(SHAPE, GRAD, dtype=np.float32)
    shard = Shard(0, 1, Path(args.run_dir or "/tmp") / "probe-ckpt")
    spec = VarSpec(VAR, np.dtype("float32"), SHAPE, False)
    shard.register(JOB, [(spec, InitSpec("zeros", 0.0, 0, None))], OptimizerConfig.parse("sgd", LR, 0, 0, 0))
    step = [0]

    def push_request() -> Any:
        return pb.PushRequest(
            job_id=JOB, worker_id=WORKER, step=1, dense_grads=tensor.map_to_proto({VAR: grad})
        )

    wire_push = push_request().SerializeToString()

    def shard_push() -> None:
        step[0] += 1
        shard.push(JOB, WORKER, step[0], {VAR: grad}, [])

    # The servicer's PushStream path for this push: applied chunk by chunk as the frames arrive.
    layout = tensor.StreamLayout([(VAR, tensor.header(grad))], 1 << 40)
    frames = list(tensor.data_frames([grad]))

    def shard_streamed_push() -> None:
        step[0] += 1
        streamed = shard.open_streamed_push(JOB, WORKER, step[0], layout)
        assert streamed is not None
        for frame in frames:
            streamed.feed(tensor.frame_data(frame))  # type: ignore[arg-type]
        shard.finish_streamed_push(streamed)

    def pull_response() -> Any:
        result = shard.pull(JOB, [VAR], [])
        resp = pb.PullResponse(version=result.version)
        _fill(resp.dense[VAR], result.dense[VAR])
        return resp

    wire_pull = pull_response().SerializeToString()
    warm = np.empty_like(grad)

    loop = asyncio.new_event_loop()
    pool = ThreadPoolExecutor(max_workers=4)  # the shard's own pool size (worker_threads)

    async def hop() -> None:  # the servicer's run_in_executor round trip, with nothing to do
        for _ in range(100):
            await loop.run_in_executor(pool, lambda: None)

    probes: dict[str, Callable[[], object]] = {
        "memcpy": lambda: np.copyto(warm, grad),
        "client encode push": lambda: push_request().SerializeToString(),
        "server decode push": lambda: tensor.from_proto(
            pb.PushRequest.FromString(wire_push).dense_grads[VAR]
        ),
        "shard push, assembled (validate, NaN check, SGD)": shard_push,
        "shard push, streamed (per chunk: NaN check, SGD; then swap)": shard_streamed_push,
        "shard pull + encode response": lambda: pull_response().SerializeToString(),
        "client decode pull": lambda: tensor.from_proto(pb.PullResponse.FromString(wire_pull).dense[VAR]),
        "thread-pool hop x100": lambda: loop.run_until_complete(hop()),
    }

    def run(msg: dict[str, Any]) -> dict[str, Any]:
        """{name: [median seconds, median minor page faults]} per call."""
        out = {}
        for name, fn in probes.items():
            fn()
            times, faults = [], []
            for _ in range(int(msg["iters"])):
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            out[name] = [median(times), median(faults)]
        return out

    serve_commands(run)


# --- the driver ----------------------------------------------------------------------------


def _costs(by_side: dict[str, list[tuple[float, float]]], last: bool = True) -> str:
    """ "server 45 ms CPU 12,300 faults, client ..." from the latest (or the median) repetition."""
    parts = []
    for side, xs in by_side.items():
        cpu, faults = xs[-1] if last else (median([x[0] for x in xs]), median([x[1] for x in xs]))
        parts.append(f"{side} {1e3 * cpu:.0f} ms CPU {faults:,.0f} faults")
    return ", ".join(parts)


def start_bytes_server(kids: Children, run: Path, name: str, env: dict[str, str]) -> Child:
    port_file = run / f"{name}.json"
    argv = role_argv(SCRIPT, "bytes-server", "--port-file", str(port_file))
    return kids.start(name, argv, port_file=port_file, env=env, wait=120)


def start_shard(kids: Children, run: Path, name: str, env: dict[str, str]) -> Child:
    port_file = run / f"{name}.json"
    argv = service_argv(
        "paramserver_svc", port_file, "--shard-index", "0", "--num-shards", "1",
        "--checkpoint-dir", str(run / f"{name}-ckpt"), "--metrics-port", "-1",
        "--max-message-bytes", str(MAX_MESSAGE),
    )  # fmt: skip
    return kids.start(name, argv, port_file=port_file, env=env, wait=120)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=0, help="Timed iterations per repetition (0: 20; quick 5).")
    for hidden in ("--system", "--addr", "--port-file"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    roles = {"bytes-server": role_bytes_server, "client": role_client, "probe": role_probe}
    if args.role:
        roles[args.role](args)
        return 0

    install_signal_handlers()
    reps = reps_of(args, full=5, quick=2)
    iters = args.iters or (5 if args.quick else 20)
    wait_for_quiet(args)
    print(f"{NBYTES:,} bytes (float32 {list(SHAPE)}) each way; {reps} repetition(s) of {iters} iterations")
    tuned = child_env(GLIBC_TUNABLES=TUNED_MALLOC)
    with scratch_dir(args, BENCHMARK) as run, Children(run) as kids:
        shard = start_shard(kids, run, "paramserver", child_env())
        shard_tuned = start_shard(kids, run, "paramserver-tuned", tuned)
        server = start_bytes_server(kids, run, "bytes-server", child_env())
        server_tuned = start_bytes_server(kids, run, "bytes-server-tuned", tuned)
        clients = {
            "mlmesh": (shard.addr, "mlmesh", child_env()),
            "mlmesh_tuned": (shard_tuned.addr, "mlmesh", tuned),
            "grpc_stream": (server.addr, "stream", child_env()),
            "grpc_stream_tuned": (server_tuned.addr, "stream", tuned),
            "grpc_unary": (server.addr, "unary", child_env()),
            "grpc_unary_tuned": (server_tuned.addr, "unary", tuned),
        }
        kid = {
            name: kids.start(
                f"client-{name}",
                role_argv(SCRIPT, "client", "--system", system, "--addr", addr),
                protocol=True,
                env=env,
            )
            for name, (addr, system, env) in clients.items()
        }
        probes = {
            env_name: kids.start(
                f"probe-{env_name}", role_argv(SCRIPT, "probe", "--run-dir", str(run)), protocol=True, env=env
            )
            for env_name, env in (("default", child_env()), ("tuned", tuned))
        }
        for c in [*kid.values(), *probes.values()]:
            c.recv(300)
        for c in kid.values():  # warm-up: connections, first big buffers
            c.call({"cmd": "run", "iters": 2}, CALL_TIMEOUT)
        times: dict[str, dict[str, list[float]]] = {s: {"push": [], "pull": [], "both": []} for s in SYSTEMS}
        costs: dict[str, dict[str, list[tuple[float, float]]]] = {
            s: {"server": [], "client": []} for s in SYSTEMS
        }
        servers = {
            "mlmesh": shard,
            "mlmesh_tuned": shard_tuned,
            "grpc_stream": server,
            "grpc_stream_tuned": server_tuned,
            "grpc_unary": server,
            "grpc_unary_tuned": server_tuned,
        }
        layers: dict[str, list[dict[str, list[float]]]] = {"default": [], "tuned": []}
        for rep in range(reps):
            order = SYSTEMS[rep % len(SYSTEMS) :] + SYSTEMS[: rep % len(SYSTEMS)]
            for system in order:
                pids = {"server": servers[system].proc.pid, "client": kid[system].proc.pid}
                before = {side: proc_stat(pid) for side, pid in pids.items()}
                out = kid[system].call({"cmd": "run", "iters": iters}, CALL_TIMEOUT)
                for side, pid in pids.items():  # per iteration: CPU seconds, page faults
                    cpu, faults = (b - a for a, b in zip(before[side], proc_stat(pid), strict=True))
                    costs[system][side].append((cpu / iters, faults / iters))
                both = [a + b for a, b in zip(out["push"], out["pull"], strict=True)]
                for key, xs in (("push", out["push"]), ("pull", out["pull"]), ("both", both)):
                    times[system][key].append(median(xs))
                print(
                    f"  rep {rep + 1}: {system:17s} push {1e3 * median(out['push']):6.1f} ms, pull "
                    f"{1e3 * median(out['pull']):6.1f} ms = {2 * NBYTES / 1e6 / median(both):5.0f} MB/s; per "
                    f"iteration: {_costs(costs[system])}",
                    flush=True,
                )
            for env_name, probe in probes.items():
                layers[env_name].append(probe.call({"cmd": "run", "iters": iters}, CALL_TIMEOUT))

    def rate(system: str, key: str) -> float:
        return (2 if key == "both" else 1) * NBYTES / 1e6 / median(times[system][key])

    # The baseline at its best: streamed, with whichever malloc setting was faster here.
    best = max(("grpc_stream", "grpc_stream_tuned"), key=lambda sys_: rate(sys_, "both"))
    base = "plain grpc.aio, 1 MiB raw-bytes stream" + (
        ", malloc keeping big blocks" if best.endswith("tuned") else ""
    )
    cases = [
        Case("push_pull_16MB", "MB/s", rate("mlmesh", "both"), base, rate(best, "both")),
        Case("push_16MB", "MB/s", rate("mlmesh", "push"), base, rate(best, "push")),
        Case("pull_16MB", "MB/s", rate("mlmesh", "pull"), base, rate(best, "pull")),
        Case(
            "analysis: plain gRPC, one 16 MiB message each way",
            "MB/s",
            rate("grpc_unary", "both"),
            "plain grpc.aio, 1 MiB raw-bytes stream",
            rate("grpc_stream", "both"),
        ),
        Case(
            "analysis: plain gRPC, one 16 MiB message each way, malloc keeping big blocks",
            "MB/s",
            rate("grpc_unary_tuned", "both"),
            "plain grpc.aio, 1 MiB raw-bytes stream, malloc keeping big blocks",
            rate("grpc_stream_tuned", "both"),
        ),
        Case(
            "analysis: plain gRPC stream, malloc keeping big blocks",
            "MB/s",
            rate("grpc_stream_tuned", "both"),
            "plain grpc.aio, 1 MiB raw-bytes stream",
            rate("grpc_stream", "both"),
        ),
        Case(
            "analysis: mlmesh push_pull, malloc keeping big blocks",
            "MB/s",
            rate("mlmesh_tuned", "both"),
            "mlmesh push_pull, default malloc",
            rate("mlmesh", "both"),
        ),
    ]
    cases[0].note = "mlmesh: Push (SGD applied) then Pull of float32[1024,4096] via trainer_svc ParamClient"
    cases[-1].note = f"GLIBC_TUNABLES={TUNED_MALLOC} for server and client"
    for name in layers["default"][0]:
        ms = {e: 1e3 * median([lay[name][0] for lay in layers[e]]) for e in layers}
        faults = {e: median([lay[name][1] for lay in layers[e]]) for e in layers}
        case = Case(f"analysis: {name}", "ms", ms["default"], "same, malloc keeping big blocks", ms["tuned"])
        case.note = (
            f"page faults per call: {faults['default']:.0f} default, {faults['tuned']:.0f} kept blocks"
        )
        cases.append(case)
    print_table(BENCHMARK, cases)
    print("CPU and minor page faults per push+pull (medians over repetitions):")
    for system in SYSTEMS:
        print(f"  {system:17s} {_costs(costs[system], last=False)}")
    print(
        f"machine: {machine_line()}; medians of {reps} repetition(s) of {iters} iterations; MB = 10^6 bytes"
    )
    write_json(args.json, BENCHMARK, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
