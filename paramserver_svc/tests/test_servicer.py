"""ParameterServerService over real gRPC channels: semantics and every bad input's exact status."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from mlmesh import keys, tensor
from mlmesh.paramserver.v1 import paramserver_pb2 as pb
from mlmesh.types.v1 import tensor_pb2

from paramserver_svc.tests.conftest import ShardClient, expect_status, rows_slice, sgd, var

pytestmark = pytest.mark.unit

IA = grpc.StatusCode.INVALID_ARGUMENT
NF = grpc.StatusCode.NOT_FOUND
FP = grpc.StatusCode.FAILED_PRECONDITION
F32 = np.float32


@pytest.fixture
def job(client: ShardClient) -> ShardClient:
    """Job 'j' with dense 'w' float32[2,3] = ones, row-sharded 'emb' float32[5,2] = zeros, int64 'count'."""
    client.stub.RegisterVariables(
        pb.RegisterVariablesRequest(
            job_id="j",
            variables=[
                var("w", [2, 3], kind="ones"),
                var("emb", [5, 2], row_sharded=True),
                var("count", [], dtype=tensor.DType.DTYPE_INT64),
            ],
            optimizer=sgd(0.5),
        ),
        timeout=10,
    )
    return client


def push(
    stub, step: int = 0, worker: str = "w0", dense=None, rows=None, job_id: str = "j"
) -> pb.PushResponse:
    return stub.Push(
        pb.PushRequest(
            job_id=job_id,
            worker_id=worker,
            step=step,
            dense_grads={k: tensor.to_proto(v) for k, v in (dense or {}).items()},
            row_grads=rows or [],
        ),
        timeout=10,
    )


def pull_dense(stub, *names: str, job_id: str = "j") -> dict[str, np.ndarray]:
    resp = stub.Pull(pb.PullRequest(job_id=job_id, dense=list(names)), timeout=10)
    return tensor.map_from_proto(resp.dense)


# -- semantics ------------------------------------------------------------------------


def test_register_reports_created_then_existing(client: ShardClient) -> None:
    req = pb.RegisterVariablesRequest(job_id="j", variables=[var("a", [2]), var("b", [3])], optimizer=sgd())
    first = client.stub.RegisterVariables(req, timeout=10)
    assert list(first.created) == ["a", "b"] and not first.existing
    again = client.stub.RegisterVariables(
        pb.RegisterVariablesRequest(job_id="j", variables=[var("a", [2]), var("c", [1])]), timeout=10
    )
    assert list(again.created) == ["c"] and list(again.existing) == ["a"]


def test_push_applies_sgd_and_counts_versions(job: ShardClient) -> None:
    g = np.arange(6, dtype=F32).reshape(2, 3)
    resp = push(job.stub, dense={"w": g}, rows=[rows_slice("emb", [3, 1], np.array([[1, 2], [3, 4]], F32))])
    assert resp.applied and resp.version == 1
    pulled = job.stub.Pull(
        pb.PullRequest(job_id="j", dense=["w"], rows=[pb.RowSlice(name="emb", rows=[1, 3, 0])])
    )
    np.testing.assert_allclose(tensor.from_proto(pulled.dense["w"]), 1 - 0.5 * g)
    assert list(pulled.rows[0].rows) == [1, 3, 0]
    np.testing.assert_allclose(tensor.from_proto(pulled.rows[0].values), [[-1.5, -2], [-0.5, -1], [0, 0]])
    assert pulled.version == 1


def test_retried_push_is_acknowledged_but_not_applied(job: ShardClient) -> None:
    g = {"w": np.ones((2, 3), F32)}
    assert push(job.stub, step=7, dense=g).applied
    retry = push(job.stub, step=7, dense=g)
    assert not retry.applied and retry.version == 1
    assert not push(job.stub, step=6, dense=g).applied
    np.testing.assert_allclose(pull_dense(job.stub, "w")["w"], 0.5)


def test_nan_push_is_rejected_and_changes_nothing(job: ShardClient) -> None:
    good = np.ones((2, 3), F32)
    bad_rows = rows_slice("emb", [0], np.array([[np.nan, 0]], F32))
    expect_status(IA, job.stub.Push, pb.PushRequest(
        job_id="j", worker_id="w0", step=0, dense_grads={"w": tensor.to_proto(good)}, row_grads=[bad_rows]
    ), "'emb'", "NaN")  # fmt: skip
    after = job.stub.Pull(pb.PullRequest(job_id="j", dense=["w", "emb"]), timeout=10)
    assert after.version == 0
    np.testing.assert_array_equal(tensor.from_proto(after.dense["w"]), np.ones((2, 3)))
    np.testing.assert_array_equal(tensor.from_proto(after.dense["emb"]), np.zeros((5, 2)))
    assert push(job.stub, step=0, dense={"w": good}).applied  # the rejected push consumed no step


def test_shard_info_lists_variables_with_local_rows(make_shards) -> None:
    shards = make_shards(2)
    shards[1].stub.RegisterVariables(
        pb.RegisterVariablesRequest(
            job_id="j",
            variables=[var("emb", [5, 4], row_sharded=True), var("dense/1", [3, 2])],
            optimizer=sgd(),
        ),
        timeout=10,
    )
    info = shards[1].stub.GetShardInfo(pb.GetShardInfoRequest(), timeout=10)
    assert (info.shard_index, info.num_shards) == (1, 2)
    by_name = {v.name: v for v in info.variables}
    emb = by_name["emb"]
    assert emb.local_rows == keys.local_rows(5, 1, 2) and emb.row_sharded and list(emb.shape) == [5, 4]
    assert emb.row_layout == pb.ROW_LAYOUT_HASH
    assert by_name["dense/1"].local_rows == 3 and by_name["dense/1"].row_layout == pb.ROW_LAYOUT_UNSPECIFIED
    assert all(v.job_id == "j" and v.dtype == tensor.DType.DTYPE_FLOAT32 for v in info.variables)


def test_two_shards_route_dense_and_rows_by_mlmesh_keys(make_shards) -> None:
    """Worker-side view: split by mlmesh.keys, push to owners, reassemble; equals SGD on full arrays."""
    n = 2
    shards = make_shards(n)
    rng = np.random.default_rng(0)
    owner = {"dense/a": 0, "dense/b": 1}  # whole variables go where the coordinator says
    full = {name: rng.normal(size=(3, 4)).astype(F32) for name in owner}
    table = rng.normal(size=(9, 3)).astype(F32)
    rows_at = keys.row_placement(9, n)
    for s in range(n):
        specs = [var(name, [3, 4], kind="value", value=full[name]) for name, o in owner.items() if o == s]
        specs.append(var("emb", [9, 3], row_sharded=True, kind="value", value=rows_at.shard_slice(table, s)))
        shards[s].stub.RegisterVariables(
            pb.RegisterVariablesRequest(job_id="j", variables=specs, optimizer=sgd(0.1)), timeout=10
        )

    ids = np.array([8, 3, 3, 0, 5])
    grads = rng.normal(size=(5, 3)).astype(F32)
    dense_grads = {name: rng.normal(size=(3, 4)).astype(F32) for name in owner}
    for s, (pos, owned) in enumerate(rows_at.split(ids)):
        own_dense = {k: v for k, v in dense_grads.items() if owner[k] == s}
        assert push(
            shards[s].stub, dense=own_dense, rows=[rows_slice("emb", owned.tolist(), grads[pos])]
        ).applied

    expected_table = table.copy()
    np.add.at(expected_table, ids, -0.1 * grads)
    wanted = np.arange(9)
    got = np.empty_like(table)
    for s, (pos, owned) in enumerate(rows_at.split(wanted)):
        resp = shards[s].stub.Pull(
            pb.PullRequest(job_id="j", rows=[pb.RowSlice(name="emb", rows=owned.tolist())]), timeout=10
        )
        got[pos] = tensor.from_proto(resp.rows[0].values)
        for name in owner:
            if owner[name] == s:
                np.testing.assert_allclose(
                    pull_dense(shards[s].stub, name)[name], full[name] - 0.1 * dense_grads[name], rtol=1e-6
                )
    np.testing.assert_allclose(got, expected_table, rtol=1e-6)


def test_save_and_load_checkpoint_rpcs(job: ShardClient) -> None:
    push(job.stub, dense={"w": np.ones((2, 3), F32)})
    saved = job.stub.SaveCheckpoint(pb.SaveCheckpointRequest(job_id="j"), timeout=10)
    assert saved.version == 1 and saved.path.endswith(".npz")
    push(job.stub, step=1, dense={"w": np.ones((2, 3), F32)})
    assert job.stub.LoadCheckpoint(pb.LoadCheckpointRequest(job_id="j"), timeout=10).version == 1
    np.testing.assert_allclose(pull_dense(job.stub, "w")["w"], 0.5)
    assert not push(job.stub, step=0, dense={"w": np.ones((2, 3), F32)}).applied  # clocks restored too


# -- bad input: RegisterVariables -------------------------------------------------------------


def register(client: ShardClient, *variables: pb.VariableSpec, job_id: str = "j", optimizer=None):
    req = pb.RegisterVariablesRequest(job_id=job_id, variables=list(variables))
    if optimizer is not None:
        req.optimizer.CopyFrom(optimizer)
    return client.stub.RegisterVariables, req


@pytest.mark.parametrize(
    ("optimizer", "needle"),
    [
        (pb.OptimizerSpec(kind="rmsprop", learning_rate=0.1), "'rmsprop'"),
        (pb.OptimizerSpec(kind="", learning_rate=0.1), "''"),
        (pb.OptimizerSpec(kind="sgd", learning_rate=0), "learning_rate must be a finite number > 0, got 0"),
        (pb.OptimizerSpec(kind="sgd", learning_rate=-1), "got -1"),
        (pb.OptimizerSpec(kind="adam", learning_rate=0.1, beta_1=1.5), "beta_1 must be in [0, 1), got 1.5"),
        (pb.OptimizerSpec(kind="adam", learning_rate=0.1, epsilon=-1), "epsilon"),
    ],
)
def test_register_rejects_bad_optimizer(client: ShardClient, optimizer, needle: str) -> None:
    expect_status(IA, *register(client, var("w", [1]), optimizer=optimizer), needle)


def test_register_new_job_without_optimizer_is_invalid(client: ShardClient) -> None:
    expect_status(IA, *register(client, var("w", [1])), "'j'", "optimizer")


def test_register_empty_job_id_is_invalid(client: ShardClient) -> None:
    expect_status(IA, *register(client, var("w", [1]), job_id="", optimizer=sgd()), "job_id is empty")


def test_register_other_optimizer_for_existing_job_fails_precondition(job: ShardClient) -> None:
    other = pb.OptimizerSpec(kind="adam", learning_rate=0.5)
    expect_status(FP, *register(job, var("w", [2, 3]), optimizer=other), "sgd(learning_rate=0.5)", "adam(")


def test_register_changed_shape_fails_precondition(job: ShardClient) -> None:
    expect_status(FP, *register(job, var("w", [3, 2])), "'w'", "float32[2,3]", "float32[3,2]")


def test_register_changed_dtype_or_partitioning_fails_precondition(job: ShardClient) -> None:
    expect_status(FP, *register(job, var("w", [2, 3], dtype=tensor.DType.DTYPE_FLOAT64)), "float64[2,3]")
    expect_status(
        FP, *register(job, var("emb", [5, 2])), "row-sharded (hash) float32[5,2]", "dense float32[5,2]"
    )


def test_register_unknown_row_layout_is_invalid(client: ShardClient) -> None:
    spec = var("emb", [4, 2], row_sharded=True)
    spec.row_layout = 7  # type: ignore[assignment]
    expect_status(IA, *register(client, spec, optimizer=sgd()), "'emb'", "unknown row_layout 7")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (var("w", [2], dtype=tensor.DType.DTYPE_UNSPECIFIED), "unknown dtype 0"),
        (var("w", [2], kind="he_normal"), "'he_normal'"),
        (var("w", [-1, 2]), "negative dimension"),
        (var("", [2]), "empty name"),
        (var("emb", [], row_sharded=True), "scalar"),
        (var("w", [2], kind="value"), "no value tensor"),
        (
            var("w", [2, 3], kind="value", value=np.zeros((3, 2), F32)),
            "float32[3,2] but this shard's slice is float32[2,3]",
        ),
        (
            var("w", [2], kind="value", value=np.zeros(2, np.float64)),
            "float64[2] but this shard's slice is float32[2]",
        ),
        (var("w", [2], kind="value", value=np.array([1, np.nan], F32)), "NaN"),
        (
            var("w", [2], kind="random_normal", dtype=tensor.DType.DTYPE_INT32, scale=1),
            "needs a floating dtype",
        ),
        # a row-sharded value is this shard's slice ([3, 2] of [5, 2] on shard 0 of 2), not the full table
        (
            var("emb", [5, 2], row_sharded=True, kind="value", value=np.zeros((5, 2), F32)),
            f"slice is float32[{keys.local_rows(5, 0, 2)},2]",
        ),
    ],
)
def test_register_rejects_bad_variable_spec(make_shards, spec: pb.VariableSpec, needle: str) -> None:
    client = make_shards(2)[0]
    expect_status(IA, *register(client, spec, optimizer=sgd()), needle)


def test_register_value_with_wrong_byte_count_is_invalid(client: ShardClient) -> None:
    spec = var("w", [2])
    spec.initializer.kind = "value"
    spec.initializer.value.CopyFrom(
        tensor_pb2.Tensor(dtype=tensor.DType.DTYPE_FLOAT32, shape=[2], content=b"\0" * 7)
    )
    expect_status(IA, *register(client, spec, optimizer=sgd()), "7 bytes", "needs 8")


def test_register_same_name_twice_in_one_request_is_invalid(client: ShardClient) -> None:
    expect_status(IA, *register(client, var("w", [1]), var("w", [1]), optimizer=sgd()), "'w' appears twice")


# -- bad input: Pull ------------------------------------------------------------------------


def test_pull_bad_inputs(job: ShardClient) -> None:
    stub = job.stub
    expect_status(IA, stub.Pull, pb.PullRequest(job_id="", dense=["w"]), "job_id is empty")
    expect_status(NF, stub.Pull, pb.PullRequest(job_id="nope", dense=["w"]), "'nope'")
    expect_status(NF, stub.Pull, pb.PullRequest(job_id="j", dense=["w", "missing"]), "'missing'")
    expect_status(
        NF, stub.Pull, pb.PullRequest(job_id="j", rows=[pb.RowSlice(name="ghost", rows=[0])]), "'ghost'"
    )


def test_pull_rows_outside_the_table_name_the_id(job: ShardClient) -> None:
    for bad in (5, -1):
        req = pb.PullRequest(job_id="j", rows=[pb.RowSlice(name="emb", rows=[0, bad])])
        expect_status(IA, job.stub.Pull, req, f"row id {bad} ", "outside [0, 5)")


def test_pull_rows_of_another_shard_name_the_owner(make_shards) -> None:
    shards = make_shards(2)
    shards[0].stub.RegisterVariables(
        pb.RegisterVariablesRequest(
            job_id="j", variables=[var("emb", [6, 2], row_sharded=True)], optimizer=sgd()
        ),
        timeout=10,
    )
    req = pb.PullRequest(job_id="j", rows=[pb.RowSlice(name="emb", rows=[2, 3])])
    expect_status(IA, shards[0].stub.Pull, req, "row id 3 ", "belongs on shard 1", "not on shard 0")


def test_pull_rows_of_a_dense_variable_is_invalid(job: ShardClient) -> None:
    expect_status(
        IA, job.stub.Pull, pb.PullRequest(job_id="j", rows=[pb.RowSlice(name="w", rows=[0])]), "'w' is dense"
    )


# -- bad input: Push ------------------------------------------------------------------------


def push_req(dense=None, rows=None, *, job_id="j", worker="w0", step=0, raw_dense=None) -> pb.PushRequest:
    req = pb.PushRequest(job_id=job_id, worker_id=worker, step=step, row_grads=rows or [])
    for k, v in (dense or {}).items():
        req.dense_grads[k].CopyFrom(tensor.to_proto(v))
    for k, t in (raw_dense or {}).items():
        req.dense_grads[k].CopyFrom(t)
    return req


@pytest.mark.parametrize(
    ("kwargs", "code", "needles"),
    [
        ({"job_id": ""}, IA, ["job_id is empty"]),
        ({"worker": ""}, IA, ["worker_id is empty"]),
        ({"step": -3}, IA, ["step must be >= 0, got -3"]),
        ({"job_id": "nope"}, NF, ["'nope'"]),
        ({"dense": {"ghost": np.zeros(1, F32)}}, NF, ["'ghost'"]),
        ({"dense": {"w": np.zeros((3, 2), F32)}}, IA, ["gradient 'w' is float32[3,2]", "is float32[2,3]"]),
        ({"dense": {"w": np.zeros((2, 3), np.float64)}}, IA, ["float64[2,3]", "float32[2,3]"]),
        ({"dense": {"w": np.full((2, 3), np.inf, F32)}}, IA, ["'w'", "NaN or Inf"]),
        ({"dense": {"emb": np.zeros((3, 2), F32)}}, IA, ["'emb' is row-sharded"]),
        ({"dense": {"count": np.zeros((), np.int64)}}, IA, ["'count' is int64", "floating"]),
        ({"rows": [rows_slice("w", [0], np.zeros((1, 3), F32))]}, IA, ["'w' is dense"]),
        (
            {"rows": [rows_slice("emb", [0, 1], np.zeros((3, 2), F32))]},
            IA,
            ["'emb'", "float32[3,2]", "need float32[2,2]"],
        ),
        ({"rows": [rows_slice("emb", [0, 1])]}, IA, ["'emb' is nothing"]),
        ({"rows": [rows_slice("emb", [0, 9], np.zeros((2, 2), F32))]}, IA, ["row id 9 ", "outside [0, 5)"]),
        ({"rows": [rows_slice("ghost", [0], np.zeros((1, 2), F32))]}, NF, ["'ghost'"]),
        (
            {
                "raw_dense": {
                    "w": tensor_pb2.Tensor(dtype=tensor.DType.DTYPE_FLOAT32, shape=[2, 3], content=b"\0" * 20)
                }
            },
            IA,
            ["tensor 'w' has 20 bytes but float32[2,3] needs 24"],
        ),
    ],
)
def test_push_rejects_bad_input(
    job: ShardClient, kwargs: dict, code: grpc.StatusCode, needles: list[str]
) -> None:
    expect_status(code, job.stub.Push, push_req(**kwargs), *needles)
    after = job.stub.Pull(pb.PullRequest(job_id="j", dense=["w", "emb"]), timeout=10)
    assert after.version == 0
    np.testing.assert_array_equal(tensor.from_proto(after.dense["w"]), np.ones((2, 3)))
    np.testing.assert_array_equal(tensor.from_proto(after.dense["emb"]), np.zeros((5, 2)))


def test_push_rows_of_another_shard_is_invalid(make_shards) -> None:
    shards = make_shards(2)
    shards[1].stub.RegisterVariables(
        pb.RegisterVariablesRequest(
            job_id="j", variables=[var("emb", [6, 2], row_sharded=True)], optimizer=sgd()
        ),
        timeout=10,
    )
    req = push_req(rows=[rows_slice("emb", [1, 4], np.ones((2, 2), F32))])
    expect_status(IA, shards[1].stub.Push, req, "row id 4 ", "belongs on shard 0", "not on shard 1")


# -- bad input: checkpoints -------------------------------------------------------------------


def test_checkpoint_rpcs_bad_inputs(job: ShardClient) -> None:
    expect_status(IA, job.stub.SaveCheckpoint, pb.SaveCheckpointRequest(job_id=""), "job_id is empty")
    expect_status(NF, job.stub.SaveCheckpoint, pb.SaveCheckpointRequest(job_id="nope"), "'nope'")
    expect_status(IA, job.stub.LoadCheckpoint, pb.LoadCheckpointRequest(job_id=""), "job_id is empty")
    expect_status(
        NF, job.stub.LoadCheckpoint, pb.LoadCheckpointRequest(job_id="j"), "no checkpoint of job 'j'"
    )


# -- consistency over gRPC --------------------------------------------------------------------


def register_with(client: ShardClient, config: pb.JobConfig, job_id: str = "c") -> None:
    client.stub.RegisterVariables(
        pb.RegisterVariablesRequest(
            job_id=job_id, variables=[var("w", [2])], optimizer=sgd(1.0), config=config
        ),
        timeout=10,
    )


def join(client: ShardClient, worker: str, job_id: str = "c") -> pb.JoinJobResponse:
    return client.stub.JoinJob(pb.JoinJobRequest(job_id=job_id, worker_id=worker), timeout=10)


def test_join_returns_the_clock_and_the_jobs_config(client: ShardClient) -> None:
    register_with(client, pb.JobConfig(consistency=pb.CONSISTENCY_BOUNDED, staleness=3))
    resp = join(client, "a")
    assert resp.clock == 0 and resp.config.consistency == pb.CONSISTENCY_BOUNDED
    assert resp.config.staleness == 3 and resp.config.worker_lease_seconds == 10.0
    info = client.stub.GetShardInfo(pb.GetShardInfoRequest(), timeout=10)
    [job] = [j for j in info.jobs if j.job_id == "c"]
    assert dict(job.workers) == {"a": 0} and job.optimizer.kind == "sgd"


def test_push_beyond_the_staleness_bound_is_failed_precondition(client: ShardClient) -> None:
    register_with(client, pb.JobConfig(consistency=pb.CONSISTENCY_BOUNDED, staleness=0))
    join(client, "fast")
    join(client, "slow")
    assert push(client.stub, step=0, worker="fast", dense={"w": np.ones(2, F32)}, job_id="c").applied
    request = pb.PushRequest(job_id="c", worker_id="fast", step=1)
    request.dense_grads["w"].CopyFrom(tensor.to_proto(np.ones(2, F32)))
    expect_status(FP, client.stub.Push, request, "step 1", "beyond the staleness bound", "clock 0")
    np.testing.assert_allclose(pull_dense(client.stub, "w", job_id="c")["w"], [-1, -1])  # only step 0


def test_sync_pull_waits_for_the_step_and_answers_once_it_is_applied(client: ShardClient) -> None:
    register_with(client, pb.JobConfig(consistency=pb.CONSISTENCY_SYNC))
    join(client, "a")
    join(client, "b")
    push(client.stub, step=0, worker="a", dense={"w": np.ones(2, F32)}, job_id="c")
    waiting = client.stub.Pull.future(
        pb.PullRequest(job_id="c", dense=["w"], worker_id="a", clock=1, pushed=1), timeout=10
    )
    with pytest.raises(grpc.FutureTimeoutError):
        waiting.result(timeout=0.3)  # b has not pushed step 0
    push(client.stub, step=0, worker="b", dense={"w": np.full(2, 3.0, F32)}, job_id="c")
    resp = waiting.result(timeout=5)
    assert resp.clock == 1 and resp.version == 1
    np.testing.assert_allclose(tensor.from_proto(resp.dense["w"]), [-2, -2])


def test_a_waiting_pull_ends_at_the_clients_deadline(client: ShardClient) -> None:
    register_with(client, pb.JobConfig(consistency=pb.CONSISTENCY_SYNC))
    join(client, "a")
    join(client, "b")
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Pull(pb.PullRequest(job_id="c", worker_id="a", clock=1, pushed=0), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_nonfinite_push_is_skipped_when_the_job_says_so(client: ShardClient) -> None:
    register_with(client, pb.JobConfig(skip_nonfinite_pushes=True))
    resp = push(client.stub, dense={"w": np.array([np.nan, 1], F32)}, job_id="c")
    assert not resp.applied and resp.version == 0
    np.testing.assert_array_equal(pull_dense(client.stub, "w", job_id="c")["w"], [0, 0])


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (pb.JobConfig(consistency=9), "config.consistency 9 is not a known ConsistencyMode"),
        (pb.JobConfig(consistency=pb.CONSISTENCY_SYNC, staleness=2), "only meaningful for bounded"),
        (pb.JobConfig(worker_lease_seconds=-1), "worker_lease_seconds must be in"),
    ],
)
def test_register_rejects_bad_job_config(client: ShardClient, config: pb.JobConfig, needle: str) -> None:
    req = pb.RegisterVariablesRequest(job_id="c", variables=[var("w", [2])], optimizer=sgd(), config=config)
    expect_status(IA, client.stub.RegisterVariables, req, needle)


def test_register_other_consistency_for_existing_job_fails_precondition(client: ShardClient) -> None:
    register_with(client, pb.JobConfig(consistency=pb.CONSISTENCY_SYNC))
    req = pb.RegisterVariablesRequest(
        job_id="c", variables=[var("w", [2])], config=pb.JobConfig(consistency=pb.CONSISTENCY_ASYNC)
    )
    expect_status(FP, client.stub.RegisterVariables, req, "consistency sync", "got async")


@pytest.mark.parametrize(
    ("rpc", "request_", "code", "needle"),
    [
        ("JoinJob", pb.JoinJobRequest(job_id="c"), IA, "worker_id is empty"),
        ("LeaveJob", pb.LeaveJobRequest(job_id="c", worker_id=""), IA, "worker_id is empty"),
        ("JoinJob", pb.JoinJobRequest(job_id="nope", worker_id="a"), NF, "'nope'"),
        ("Pull", pb.PullRequest(job_id="c", worker_id="a", clock=1, pushed=2), IA, "0 <= pushed <= clock"),
    ],
)
def test_membership_and_clock_bad_inputs(client: ShardClient, rpc: str, request_, code, needle: str) -> None:
    register_with(client, pb.JobConfig(consistency=pb.CONSISTENCY_SYNC))
    expect_status(code, getattr(client.stub, rpc), request_, needle)


# -- chunked transfer (PullStream / PushStream) -------------------------------------------------


def push_stream(stub, messages: list[pb.PushChunk]) -> pb.PushResponse:
    return stub.PushStream(iter(messages), timeout=10)


def stream_of(
    step: int, dense: dict[str, np.ndarray], size: int = 7, job_id: str = "j"
) -> list[pb.PushChunk]:
    names = sorted(dense)
    head = pb.PushRequest(job_id=job_id, worker_id="w0", step=step)
    for n in names:
        head.dense_grads[n].CopyFrom(tensor.header(dense[n]))
    return [pb.PushChunk(header=head)] + [
        pb.PushChunk(data=p) for p in tensor.chunks([dense[n] for n in names], size)
    ]


def test_push_stream_applies_like_push_and_pull_stream_answers_like_pull(job: ShardClient) -> None:
    g = np.arange(6, dtype=F32).reshape(2, 3)
    assert push_stream(job.stub, stream_of(0, {"w": g})).applied
    np.testing.assert_allclose(pull_dense(job.stub, "w")["w"], 1 - 0.5 * g)
    chunks = list(
        job.stub.PullStream(
            pb.PullRequest(job_id="j", dense=["w", "emb"], rows=[pb.RowSlice(name="emb", rows=[4, 1])]),
            timeout=10,
        )
    )
    head = chunks[0].header
    assert head.version == 1 and not any(t.content for t in head.dense.values())
    asm = tensor.Assembler(
        [(n, head.dense[n]) for n in sorted(head.dense)] + [("rows", r.values) for r in head.rows], 1 << 20
    )
    for c in chunks[1:]:
        asm.feed(c.data)
    emb, w, rows = asm.finish()
    np.testing.assert_allclose(w, 1 - 0.5 * g)
    assert emb.shape == (5, 2) and rows.shape == (2, 2)
    assert not push_stream(job.stub, stream_of(0, {"w": g})).applied  # idempotent like Push


@pytest.mark.parametrize(
    ("mutate", "code", "needle"),
    [
        (lambda m: m[1:], IA, "first PushStream message must carry the header"),
        (lambda m: m[:-1], IA, "carried 21 bytes of tensor data; its header's tensors need 24"),
        (lambda m: [*m, pb.PushChunk(data=b"\0")], IA, "more tensor bytes than its header's tensors need"),
        (lambda m: [*m, pb.PushChunk(header=m[0].header)], IA, "only the first PushStream message"),
        (lambda m: [], IA, "PushStream carried no message"),
    ],
)
def test_push_stream_bad_streams(job: ShardClient, mutate, code, needle: str) -> None:
    messages = stream_of(0, {"w": np.ones((2, 3), F32)})  # 24 bytes in chunks of 7
    expect_status(
        code, lambda req, timeout: job.stub.PushStream(iter(req), timeout=timeout), mutate(messages), needle
    )
    np.testing.assert_array_equal(pull_dense(job.stub, "w")["w"], np.ones((2, 3)))  # nothing applied


def test_push_stream_header_with_content_is_invalid(job: ShardClient) -> None:
    head = pb.PushRequest(job_id="j", worker_id="w0", step=0)
    head.dense_grads["w"].CopyFrom(tensor.to_proto(np.ones((2, 3), F32)))
    expect_status(
        IA, lambda req, timeout: job.stub.PushStream(iter(req), timeout=timeout), [pb.PushChunk(header=head)],
        "'w' in a stream header carries 24 bytes of content",
    )  # fmt: skip


BIG = 4 << 20  # float32 elements: 16 MiB, many 1 MiB chunks


def register_big(client: ShardClient) -> None:
    client.stub.RegisterVariables(
        pb.RegisterVariablesRequest(
            job_id="big", variables=[var("w", [BIG], kind="ones")], optimizer=sgd(0.5)
        ),
        timeout=10,
    )


def test_a_pull_streaming_while_a_push_is_applied_answers_the_old_value_whole(client: ShardClient) -> None:
    register_big(client)
    stream = client.stub.PullStream(pb.PullRequest(job_id="big", dense=["w"]), timeout=30)
    head = next(stream).header
    first = next(stream)  # the answer is on its way; most of it is not sent yet
    grad = {"w": np.ones(BIG, F32)}
    assert push_stream(client.stub, stream_of(0, grad, tensor.CHUNK_BYTES, "big")).applied
    asm = tensor.Assembler([("w", head.dense["w"])], 1 << 30)
    asm.feed(first.data)
    for chunk in stream:
        asm.feed(chunk.data)
    (old,) = asm.finish()
    assert head.version == 0
    np.testing.assert_array_equal(old, 1.0)  # not one element of the update
    new = client.stub.Pull(pb.PullRequest(job_id="big", dense=["w"]), timeout=30)
    assert new.version == 1


@pytest.mark.parametrize("where", [0, BIG // 2 + 3, BIG - 1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_anywhere_in_a_streamed_push_is_refused_naming_the_variable(
    client: ShardClient, where: int, bad: float
) -> None:
    register_big(client)
    grad = np.full(BIG, 1e-3, F32)
    grad[where] = bad
    messages = stream_of(0, {"w": grad}, tensor.CHUNK_BYTES, "big")
    expect_status(
        IA,
        lambda req, timeout: client.stub.PushStream(iter(req), timeout=timeout),
        messages,
        "'w'",
        "NaN or Inf",
    )
    after = list(client.stub.PullStream(pb.PullRequest(job_id="big", dense=["w"]), timeout=30))
    assert after[0].header.version == 0  # nothing applied
