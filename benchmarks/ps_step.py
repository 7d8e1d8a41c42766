"""The parameter-server round trip a worker pays per step, against TensorFlow's PS runtime.

    python benchmarks/ps_step.py --json benchmarks/results/ps_step.json [--quick]

One step = Pull the parameters, then Push gradients that the shards apply with Adam
(lr 1e-3, Keras defaults), both fanned out to the two shards at once. Two cases:

- dense: the fashion CNN's 8 variables (225,034 float32: conv 3x3x1x32 + 32, 3x3x32x64 + 64,
  1600x128 + 128, 128x10 + 10), each whole on the shard `mlmesh.keys.dense_shard` names;
- sparse: a 1,000,000 x 32 float32 embedding, row r on shard r % 2; each step pulls and pushes
  1,024 distinct random rows (lazy Adam: only those rows and their slots change).

Systems, each measured from its own client process (all on loopback, torn down at the end):

- mlmesh: 2 `python -m paramserver_svc` shards, driven by the trainer's own client
  (`trainer_svc.clients.ParamClient`, grpc.aio), fanning out like `trainer_svc` workers do;
- tf.distribute (the peer): 2 `tf.distribute.Server` ps tasks in their own processes and the
  client connected as "chief" (`tf.config.experimental_connect_to_cluster`) - the runtime under
  ParameterServerStrategy. Variables and Adam slots live on the same shard as in mlmesh; a step
  is one tf.function that reads every variable back to the client, then one that applies
  `ResourceApplyAdam` (dense) or gather/lazy-Adam/scatter (sparse) on the ps devices;
- NumPy floor: the same Adam (paramserver_svc's own update rule) on arrays in one process,
  no RPC: what the step would cost with no distribution at all.

Figures: median per-step latency (ms) and steps/s, each the median over repetitions
(systems interleaved per repetition).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
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
    free_port,
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

BENCHMARK = "ps_step"
SCRIPT = "ps_step.py"
NUM_SHARDS = 2
JOB = "bench"
DENSE: dict[str, tuple[int, ...]] = {
    "conv2d/kernel": (3, 3, 1, 32),
    "conv2d/bias": (32,),
    "conv2d_1/kernel": (3, 3, 32, 64),
    "conv2d_1/bias": (64,),
    "dense/kernel": (1600, 128),
    "dense/bias": (128,),
    "probabilities/kernel": (128, 10),
    "probabilities/bias": (10,),
}
EMBEDDING = "embedding"
EMB_ROWS, EMB_DIM, ROWS_PER_STEP = 1_000_000, 32, 1024
LR, BETA_1, BETA_2, EPSILON = 1e-3, 0.9, 0.999, 1e-7
CALL_TIMEOUT = 600.0


# --- shared inputs (identical in every client process: same seeds) -------------------------


def dense_values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {n: rng.uniform(-0.05, 0.05, size=s).astype(np.float32) for n, s in DENSE.items()}


def dense_grads() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {n: (rng.standard_normal(s) * 1e-3).astype(np.float32) for n, s in DENSE.items()}


def sparse_steps(steps: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per step: 1,024 distinct global row ids and their gradient rows."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        rows = rng.choice(EMB_ROWS, size=ROWS_PER_STEP, replace=False).astype(np.int64)
        out.append((rows, (rng.standard_normal((ROWS_PER_STEP, EMB_DIM)) * 1e-3).astype(np.float32)))
    return out


def owner(name: str) -> int:
    from mlmesh import keys

    return keys.dense_shard(name, NUM_SHARDS)


# --- clients: each answers {"cmd": "run", "case": ..., "steps": N, "seed": S} ---------------


class MlmeshClient:
    """The trainer worker's client and fan-out against the real shards."""

    def __init__(self, addrs: list[str]) -> None:
        from trainer_svc.clients import CallPolicy, ParamClient

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # grpc.aio channels bind to the loop current at creation
        self.params = ParamClient(addrs, CallPolicy(timeout=60, retry_seconds=5))
        self.by_shard = [[n for n in DENSE if owner(n) == s] for s in range(NUM_SHARDS)]
        self.grads = dense_grads()
        self.step = 0
        self.loop.run_until_complete(self._register())

    async def _register(self) -> None:
        from mlmesh import keys

        from trainer_svc.core.types import OptimizerConfig, VariableSpec

        opt = OptimizerConfig("adam", LR, BETA_1, BETA_2, EPSILON)
        values = dense_values()
        for s in range(NUM_SHARDS):
            specs = [VariableSpec(n, "float32", DENSE[n], False, values[n]) for n in self.by_shard[s]]
            await self.params.register(s, JOB, specs, opt)
        # The embedding is created on the shards (a 128 MB value would not fit one message).
        from mlmesh.paramserver.v1 import paramserver_pb2 as pb

        for s in range(NUM_SHARDS):
            req = pb.RegisterVariablesRequest(
                job_id=JOB,
                variables=[
                    pb.VariableSpec(
                        name=EMBEDDING,
                        dtype=1,  # DTYPE_FLOAT32
                        shape=[EMB_ROWS, EMB_DIM],
                        row_sharded=True,
                        initializer=pb.Initializer(kind="random_uniform", scale=0.05, seed=s),
                    )
                ],
            )
            await self.params.stubs[s].RegisterVariables(req, timeout=120)
        assert keys.local_rows(EMB_ROWS, 0, NUM_SHARDS) == EMB_ROWS // NUM_SHARDS

    async def _dense_step(self) -> None:
        shards = range(NUM_SHARDS)
        await asyncio.gather(*(self.params.pull(s, JOB, self.by_shard[s], {}) for s in shards))
        self.step += 1
        await asyncio.gather(
            *(
                self.params.push(s, JOB, "w0", self.step, {n: self.grads[n] for n in self.by_shard[s]}, {})
                for s in shards
            )
        )

    async def _sparse_step(self, rows: np.ndarray, grad: np.ndarray) -> np.ndarray:
        from mlmesh import keys

        split = keys.split_rows(rows, NUM_SHARDS)
        pulled = await asyncio.gather(
            *(self.params.pull(s, JOB, [], {EMBEDDING: split[s][1]}) for s in range(NUM_SHARDS))
        )
        values = np.empty((len(rows), EMB_DIM), dtype=np.float32)
        for s, (pos, _) in enumerate(split):
            values[pos] = pulled[s].rows[EMBEDDING][1]
        self.step += 1
        await asyncio.gather(
            *(
                self.params.push(s, JOB, "w0", self.step, {}, {EMBEDDING: (split[s][1], grad[split[s][0]])})
                for s in range(NUM_SHARDS)
            )
        )
        return values

    def dense_sums(self) -> dict[str, float]:
        async def pull() -> dict[str, float]:
            got = await asyncio.gather(
                *(self.params.pull(s, JOB, self.by_shard[s], {}) for s in range(NUM_SHARDS))
            )
            return {n: float(a.sum(dtype=np.float64)) for r in got for n, a in r.dense.items()}

        return self.loop.run_until_complete(pull())

    def run(self, case: str, steps: int, seed: int) -> list[float]:
        work = sparse_steps(steps, seed) if case == "sparse" else []

        async def go() -> list[float]:
            lat = []
            for i in range(steps):
                t0 = time.perf_counter()
                if case == "dense":
                    await self._dense_step()
                else:
                    await self._sparse_step(*work[i])
                lat.append(time.perf_counter() - t0)
            return lat

        return self.loop.run_until_complete(go())


class TfClient:
    """A coordinator in a tf.distribute cluster whose 2 ps tasks hold the variables and slots."""

    def __init__(self, cluster: dict[str, list[str]]) -> None:
        import tensorflow as tf

        self.tf = tf
        tf.config.experimental_connect_to_cluster(
            tf.train.ClusterSpec(cluster), job_name="chief", task_index=0, protocol="grpc"
        )
        local = "/job:chief/replica:0/task:0/device:CPU:0"
        ps = [f"/job:ps/replica:0/task:{i}/device:CPU:0" for i in range(NUM_SHARDS)]
        values = dense_values()
        self.vars: list[tuple[Any, Any, Any, str]] = []
        for name, shape in DENSE.items():
            with tf.device(ps[owner(name)]):
                var = tf.Variable(values[name], name=name.replace("/", "_"))
                m = tf.Variable(tf.zeros(shape), name=name.replace("/", "_") + "_m")
                v = tf.Variable(tf.zeros(shape), name=name.replace("/", "_") + "_v")
            self.vars.append((var, m, v, ps[owner(name)]))
        self.emb: list[tuple[Any, Any, Any, str]] = []
        for s in range(NUM_SHARDS):
            rows = EMB_ROWS // NUM_SHARDS
            with tf.device(ps[s]):  # created on the ps task itself, like the shards' initializer
                table = tf.Variable(tf.random.uniform([rows, EMB_DIM], -0.05, 0.05, seed=s))
                m = tf.Variable(tf.zeros([rows, EMB_DIM]))
                v = tf.Variable(tf.zeros([rows, EMB_DIM]))
            self.emb.append((table, m, v, ps[s]))
        grads = dense_grads()
        with tf.device(local):
            self.grads = [tf.constant(grads[n]) for n in DENSE]
        self.t = {"dense": 0, "sparse": 0}  # Adam's step count, per variable group

        @tf.function
        def pull_dense() -> list[Any]:
            out = []
            for var, _, _, _ in self.vars:
                with tf.device(local):
                    out.append(tf.identity(var.read_value()))
            return out

        grad_spec = [tf.TensorSpec(s, tf.float32) for s in DENSE.values()]

        @tf.function(
            input_signature=[grad_spec, tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32)]
        )
        def push_dense(grads: list[Any], b1p: Any, b2p: Any) -> None:
            for (var, m, v, dev), g in zip(self.vars, grads, strict=True):
                with tf.device(dev):
                    tf.raw_ops.ResourceApplyAdam(
                        var=var.handle,
                        m=m.handle,
                        v=v.handle,
                        beta1_power=b1p,
                        beta2_power=b2p,
                        lr=LR,
                        beta1=BETA_1,
                        beta2=BETA_2,
                        epsilon=EPSILON,
                        grad=g,
                        use_locking=False,
                    )

        ids = tf.TensorSpec([None], tf.int64)
        rows_spec = tf.TensorSpec([None, EMB_DIM], tf.float32)

        @tf.function(input_signature=[ids, ids])
        def pull_rows(ids0: Any, ids1: Any) -> list[Any]:
            out = []
            for (table, _, _, dev), local_ids in zip(self.emb, (ids0, ids1), strict=True):
                with tf.device(dev):
                    got = tf.gather(table, local_ids)
                with tf.device(local):
                    out.append(tf.identity(got))
            return out

        @tf.function(input_signature=[ids, rows_spec, ids, rows_spec, tf.TensorSpec([], tf.float32)])
        def push_rows(ids0: Any, g0: Any, ids1: Any, g1: Any, alpha: Any) -> None:
            for (table, m, v, dev), local_ids, g in zip(self.emb, (ids0, ids1), (g0, g1), strict=True):
                with tf.device(dev):  # lazy Adam on the ps task, as paramserver_svc applies it
                    mr = tf.gather(m, local_ids)
                    vr = tf.gather(v, local_ids)
                    mr = mr + (g - mr) * (1.0 - BETA_1)
                    vr = vr + (tf.square(g) - vr) * (1.0 - BETA_2)
                    m.scatter_update(tf.IndexedSlices(mr, local_ids))
                    v.scatter_update(tf.IndexedSlices(vr, local_ids))
                    table.scatter_sub(tf.IndexedSlices(alpha * mr / (tf.sqrt(vr) + EPSILON), local_ids))

        self.pull_dense, self.push_dense = pull_dense, push_dense
        self.pull_rows, self.push_rows = pull_rows, push_rows

    def dense_sums(self) -> dict[str, float]:
        values = [x.numpy() for x in self.pull_dense()]
        return {n: float(v.sum(dtype=np.float64)) for n, v in zip(DENSE, values, strict=True)}

    def run(self, case: str, steps: int, seed: int) -> list[float]:
        from mlmesh import keys

        tf = self.tf
        work = sparse_steps(steps, seed) if case == "sparse" else []
        lat = []
        for i in range(steps):
            t0 = time.perf_counter()
            self.t[case] += 1
            b1p, b2p = BETA_1 ** self.t[case], BETA_2 ** self.t[case]
            if case == "dense":
                _values = [x.numpy() for x in self.pull_dense()]
                self.push_dense(self.grads, tf.constant(b1p, tf.float32), tf.constant(b2p, tf.float32))
            else:
                rows, grad = work[i]
                split = keys.split_rows(rows, NUM_SHARDS)
                local_ids = [tf.constant(keys.to_local(g, NUM_SHARDS)) for _, g in split]
                pulled = self.pull_rows(*local_ids)
                values = np.empty((len(rows), EMB_DIM), dtype=np.float32)
                for (pos, _), got in zip(split, pulled, strict=True):
                    values[pos] = got.numpy()
                alpha = LR * (1 - b2p) ** 0.5 / (1 - b1p)
                self.push_rows(
                    local_ids[0],
                    tf.constant(grad[split[0][0]]),
                    local_ids[1],
                    tf.constant(grad[split[1][0]]),
                    tf.constant(alpha, tf.float32),
                )
            lat.append(time.perf_counter() - t0)
        return lat


class NumpyFloor:
    """paramserver_svc's Adam on arrays in this process: no RPC, no serialization, one table."""

    def __init__(self) -> None:
        from paramserver_svc.core.specs import OptimizerConfig
        from paramserver_svc.core.update_rules import make_rule

        self.rule = make_rule(OptimizerConfig.parse("adam", LR, BETA_1, BETA_2, EPSILON))
        self.values = dense_values()
        self.slots = {n: self.rule.init_slots(v) for n, v in self.values.items()}
        self.updates = {n: 0 for n in self.values}
        self.grads = dense_grads()
        rng = np.random.default_rng(3)
        self.table = rng.uniform(-0.05, 0.05, size=(EMB_ROWS, EMB_DIM)).astype(np.float32)
        self.table_slots = self.rule.init_slots(self.table)
        self.table_updates = 0

    def dense_sums(self) -> dict[str, float]:
        return {n: float(v.sum(dtype=np.float64)) for n, v in self.values.items()}

    def run(self, case: str, steps: int, seed: int) -> list[float]:
        work = sparse_steps(steps, seed) if case == "sparse" else []
        lat = []
        for i in range(steps):
            t0 = time.perf_counter()
            if case == "dense":
                _pulled = {n: v.copy() for n, v in self.values.items()}  # the pull's copy
                for n, v in self.values.items():
                    self.updates[n] += 1
                    self.rule.apply_dense(v, self.slots[n], self.grads[n], self.updates[n])
            else:
                rows, grad = work[i]
                _pulled_rows = self.table[rows]  # the pull's gather
                self.table_updates += 1
                self.rule.apply_rows(self.table, self.table_slots, rows, grad, self.table_updates)
            lat.append(time.perf_counter() - t0)
        return lat


def role_client(args: argparse.Namespace) -> None:
    if args.system == "mlmesh":
        client: Any = MlmeshClient(args.addrs.split(","))
    elif args.system == "tf":
        client = TfClient(json.loads(args.cluster))
    else:
        client = NumpyFloor()

    def handle(msg: dict[str, Any]) -> dict[str, Any]:
        if msg["cmd"] == "dense_sums":
            return {"sums": client.dense_sums()}
        started = time.perf_counter()
        lat = client.run(msg["case"], msg["steps"], msg["seed"])
        return {"latencies": lat, "seconds": time.perf_counter() - started}

    serve_commands(handle)


def role_tf_ps(args: argparse.Namespace) -> None:
    import tensorflow as tf
    from mlmesh.server import write_port_file

    cluster = json.loads(args.cluster)
    server = tf.distribute.Server(
        tf.train.ClusterSpec(cluster), job_name="ps", task_index=args.index, protocol="grpc", start=True
    )
    write_port_file(
        Path(args.port_file), {"port": int(cluster["ps"][args.index].rsplit(":", 1)[1]), "pid": os.getpid()}
    )
    server.join()


# --- the driver ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--dense-steps", type=int, default=0, help="Timed dense steps per repetition (0: 200).")
    p.add_argument("--sparse-steps", type=int, default=0, help="Timed sparse steps per repetition (0: 300).")
    for hidden in ("--system", "--addrs", "--cluster", "--port-file"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "client":
        role_client(args)
        return 0
    if args.role == "tf-ps":
        role_tf_ps(args)
        return 0

    install_signal_handlers()
    reps = reps_of(args, full=5, quick=2)
    dense_steps = args.dense_steps or (40 if args.quick else 200)
    sparse_steps_n = args.sparse_steps or (60 if args.quick else 300)
    wait_for_quiet(args)
    total = sum(int(np.prod(s)) for s in DENSE.values())
    print(
        f"dense: {total:,} float32 in {len(DENSE)} variables; sparse: {ROWS_PER_STEP} rows of "
        f"{EMB_ROWS:,}x{EMB_DIM}; {reps} repetition(s) of {dense_steps} dense / {sparse_steps_n} sparse steps"
    )
    with scratch_dir(args, BENCHMARK) as run, Children(run) as kids:
        cluster = {
            "ps": [f"{LOOPBACK}:{free_port()}" for _ in range(NUM_SHARDS)],
            "chief": [f"{LOOPBACK}:{free_port()}"],
        }
        for i in range(NUM_SHARDS):
            kids.start(
                f"tf-ps-{i}",
                role_argv(
                    SCRIPT,
                    "tf-ps",
                    "--cluster",
                    json.dumps(cluster),
                    "--index",
                    str(i),
                    "--port-file",
                    str(run / f"tfps{i}.json"),
                ),
                port_file=run / f"tfps{i}.json",
                wait=None,
            )
        shards = [
            kids.start(
                f"paramserver-{i}",
                service_argv(
                    "paramserver_svc",
                    run / f"ps{i}.json",
                    "--shard-index",
                    str(i),
                    "--num-shards",
                    str(NUM_SHARDS),
                    "--checkpoint-dir",
                    str(run / f"ckpt{i}"),
                    "--metrics-port",
                    "-1",
                ),
                port_file=run / f"ps{i}.json",
            )
            for i in range(NUM_SHARDS)
        ]
        for kid in kids.children[:NUM_SHARDS]:
            kid.wait_port_file(120)
        addrs = ",".join(s.addr for s in shards)
        clients: dict[str, Child] = {
            "mlmesh": kids.start(
                "client-mlmesh",
                role_argv(SCRIPT, "client", "--system", "mlmesh", "--addrs", addrs),
                protocol=True,
            ),
            "tf": kids.start(
                "client-tf",
                role_argv(SCRIPT, "client", "--system", "tf", "--cluster", json.dumps(cluster)),
                protocol=True,
            ),
            "numpy": kids.start(
                "client-numpy", role_argv(SCRIPT, "client", "--system", "numpy"), protocol=True
            ),
        }
        for c in clients.values():
            c.recv(300)  # ready: registered / variables created
        for case in ("dense", "sparse"):  # untimed warm-up: connections, traced functions
            for c in clients.values():
                c.call({"cmd": "run", "case": case, "steps": 10, "seed": 99}, CALL_TIMEOUT)

        step_ms: dict[tuple[str, str], list[float]] = {}
        rate: dict[tuple[str, str], list[float]] = {}
        for rep in range(reps):
            for case, steps in (("dense", dense_steps), ("sparse", sparse_steps_n)):
                for system, c in clients.items():
                    out = c.call({"cmd": "run", "case": case, "steps": steps, "seed": rep}, CALL_TIMEOUT)
                    step_ms.setdefault((system, case), []).append(median(out["latencies"]) * 1e3)
                    rate.setdefault((system, case), []).append(steps / out["seconds"])
                    last_ms, last_rate = step_ms[system, case][-1], rate[system, case][-1]
                    print(
                        f"  rep {rep + 1}: {case:6s} {system:6s} "
                        f"median {last_ms:7.2f} ms/step, {last_rate:8.1f} steps/s",
                        flush=True,
                    )

        # Same start, same gradients, same number of Adam steps: every system must hold the same
        # dense values now, or they did not do the same work.
        sums = {system: c.call({"cmd": "dense_sums"}, CALL_TIMEOUT)["sums"] for system, c in clients.items()}
        for name in DENSE:
            got = [sums[system][name] for system in clients]
            if not np.allclose(got, got[0], rtol=1e-3, atol=1e-3):
                seen = dict(zip(clients, got, strict=True))
                raise RuntimeError(f"systems disagree on variable {name!r} after the run: {seen}")
        print(f"after {reps} repetition(s), all systems hold the same dense values (sums agree)")

    ms = {k: median(v) for k, v in step_ms.items()}
    sps = {k: median(v) for k, v in rate.items()}
    tf_name = "tf.distribute (2 ps tasks, coordinator client)"
    floor = "NumPy floor: same Adam in one process, no RPC"
    dense = f"dense {total // 1000}k params pull+push"
    sparse = f"sparse {ROWS_PER_STEP} of 1Mx{EMB_DIM} rows pull+push"
    cases = [
        Case(f"{dense}: step latency", "ms/step", ms["mlmesh", "dense"], tf_name, ms["tf", "dense"]),
        Case(f"{dense}: step rate", "steps/s", sps["mlmesh", "dense"], tf_name, sps["tf", "dense"]),
        Case(
            f"{dense}: step latency vs floor", "ms/step", ms["mlmesh", "dense"], floor, ms["numpy", "dense"]
        ),
        Case(f"{sparse}: step latency", "ms/step", ms["mlmesh", "sparse"], tf_name, ms["tf", "sparse"]),
        Case(f"{sparse}: step rate", "steps/s", sps["mlmesh", "sparse"], tf_name, sps["tf", "sparse"]),
        Case(
            f"{sparse}: step latency vs floor",
            "ms/step",
            ms["mlmesh", "sparse"],
            floor,
            ms["numpy", "sparse"],
        ),
    ]
    print_table(BENCHMARK, cases)
    print(
        f"machine: {machine_line()}; medians of {reps} repetition(s); "
        "ms/step: ratio < 1 means mlmesh is faster; steps/s: ratio > 1 means mlmesh is faster"
    )
    write_json(args.json, BENCHMARK, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
