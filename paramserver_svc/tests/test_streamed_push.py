"""A dense push applied chunk by chunk as its stream arrives (`core.streamed_push`): the same
bits as the assembled push, and all or nothing (a NaN anywhere, a short or broken stream, or a
concurrent update never leave a half-applied push behind)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.errors import InvalidArgument
from mlmesh.paramserver.v1 import paramserver_pb2 as pb

from paramserver_svc.core.shard import RowValues, Shard
from paramserver_svc.core.specs import InitSpec, JobConfig, Mode, OptimizerConfig, VarSpec
from paramserver_svc.core.streamed_push import StreamedPush
from paramserver_svc.tests.conftest import ShardClient, sgd, var

pytestmark = pytest.mark.unit

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
RULES = {
    "sgd": OptimizerConfig.parse("sgd", 0.1),
    "momentum_nesterov": OptimizerConfig.parse("momentum", 0.05, momentum=0.9, nesterov=True),
    "adam": OptimizerConfig.parse("adam", 0.01),
    "adagrad": OptimizerConfig.parse("adagrad", 0.1),
}
# Two float32 variables and a float64 one, in the stream's (sorted) order: with odd chunk sizes
# elements straddle chunks, and the float64 one starts at an offset that is not a multiple of 8.
SPECS = [VarSpec("a", F32, (3, 5)), VarSpec("b", F64, (7,)), VarSpec("c", F32, (4, 4, 2))]


def make_shard(
    tmp_path: Path, name: str, optimizer: OptimizerConfig, config: JobConfig | None = None
) -> Shard:
    shard = Shard(0, 1, tmp_path / name)
    rng = np.random.default_rng(0)
    inits = [(s, InitSpec("value", value=rng.normal(size=s.shape).astype(s.dtype))) for s in SPECS]
    shard.register("j", inits, optimizer, config)
    return shard


def gradients(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.normal(size=s.shape).astype(s.dtype) for s in SPECS}


def layout_of(grads: dict[str, np.ndarray]) -> tensor.StreamLayout:
    return tensor.StreamLayout([(n, tensor.header(grads[n])) for n in sorted(grads)], 1 << 30)


def chunks_of(grads: dict[str, np.ndarray], size: int) -> list[memoryview]:
    return [memoryview(c) for c in tensor.chunks([grads[n] for n in sorted(grads)], size)]


def open_push(shard: Shard, grads: dict[str, np.ndarray], step: int, worker: str = "w0") -> StreamedPush:
    streamed = shard.open_streamed_push("j", worker, step, layout_of(grads))
    assert streamed is not None, "this push should take the streamed path"
    return streamed


def state(shard: Shard) -> dict[str, np.ndarray]:
    job = shard.store.get("j")
    out = {}
    for name, v in job.variables.items():
        out[name] = v.value.copy()
        out.update({f"{name}/{k}": s.copy() for k, s in v.slots.items()})
    return out


def assert_same_state(a: Shard, b: Shard) -> None:
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)  # bit for bit
    assert a.store.get("j").version == b.store.get("j").version


@pytest.mark.parametrize("chunk", [7, 24, 1 << 20])
@pytest.mark.parametrize("rule", list(RULES))
def test_streamed_pushes_give_the_same_bits_as_assembled_pushes(
    tmp_path: Path, rule: str, chunk: int
) -> None:
    assembled = make_shard(tmp_path, "assembled", RULES[rule])
    streamed = make_shard(tmp_path, "streamed", RULES[rule])
    for step in range(3):  # Adam's bias correction changes per step
        grads = gradients(step)
        assert assembled.push("j", "w0", step, grads, []).applied
        push = open_push(streamed, grads, step)
        for c in chunks_of(grads, chunk):
            push.feed(c)
        assert push.current(streamed.store.get("j"))  # installs what it computed, no fallback
        assert streamed.finish_streamed_push(push).applied
    assert_same_state(assembled, streamed)


@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_a_nan_in_the_last_chunk_applies_nothing(tmp_path: Path, rule: str) -> None:
    shard = make_shard(tmp_path, "s", RULES[rule])
    assert shard.push("j", "w0", 0, gradients(0), []).applied
    before = state(shard)
    grads = gradients(1)
    grads["c"][-1, -1, -1] = np.nan  # the stream's very last element
    push = open_push(shard, grads, 1)
    for c in chunks_of(grads, 24):
        push.feed(c)
    with pytest.raises(InvalidArgument, match="gradient of variable 'c' contains NaN or Inf; nothing"):
        shard.finish_streamed_push(push)
    after = state(shard)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert shard.store.get("j").version == 1
    assert shard.push("j", "w0", 1, gradients(1), []).applied  # the step was not taken


def test_a_skipped_nonfinite_streamed_push_advances_the_clock_and_changes_nothing(tmp_path: Path) -> None:
    shard = make_shard(tmp_path, "s", RULES["adam"], JobConfig.parse(Mode.ASYNC, skip_nonfinite=True))
    before = state(shard)
    grads = gradients(0)
    grads["a"][0, 0] = np.inf
    push = open_push(shard, grads, 0)
    for c in chunks_of(grads, 1 << 20):
        push.feed(c)
    assert not shard.finish_streamed_push(push).applied
    assert all(np.array_equal(v, before[k]) for k, v in state(shard).items())
    assert not shard.push("j", "w0", 0, gradients(0), []).applied  # step 0 counts as pushed


def test_a_stream_that_ends_early_applies_nothing(tmp_path: Path) -> None:
    shard = make_shard(tmp_path, "s", RULES["adam"])
    before = state(shard)
    grads = gradients(0)
    push = open_push(shard, grads, 0)
    parts = chunks_of(grads, 24)
    for c in parts[: len(parts) // 2]:
        push.feed(c)
    assert all(np.array_equal(v, before[k]) for k, v in state(shard).items())  # nothing written yet
    with pytest.raises(InvalidArgument, match="its header's tensors need 244"):
        shard.finish_streamed_push(push)
    assert all(np.array_equal(v, before[k]) for k, v in state(shard).items())
    assert shard.store.get("j").version == 0


def test_an_update_that_lands_while_a_push_streams_in_is_not_lost(tmp_path: Path) -> None:
    """Another worker's push applied mid-stream makes the computed values stale: the streamed
    push is then applied on top of it, as if it had arrived whole after it."""
    expected = make_shard(tmp_path, "expected", RULES["adam"])
    shard = make_shard(tmp_path, "s", RULES["adam"])
    mine, theirs = gradients(1), gradients(2)
    assert expected.push("j", "w1", 0, theirs, []).applied
    assert expected.push("j", "w0", 0, mine, []).applied
    push = open_push(shard, mine, 0)
    parts = chunks_of(mine, 24)
    for c in parts[:3]:
        push.feed(c)
    assert shard.push("j", "w1", 0, theirs, []).applied
    for c in parts[3:]:
        push.feed(c)
    assert not push.current(shard.store.get("j"))
    assert shard.finish_streamed_push(push).applied
    assert_same_state(expected, shard)


@pytest.mark.parametrize(
    ("config", "lease"),
    [
        (JobConfig.parse(Mode.SYNC), ""),  # the step's pushes are summed first
        (JobConfig.parse(Mode.ASYNC, exactly_once=True), "lease-1"),  # staged until the lease commits
    ],
)
def test_pushes_whose_effect_is_not_known_on_arrival_are_assembled(
    tmp_path: Path, config: JobConfig, lease: str
) -> None:
    shard = make_shard(tmp_path, "s", RULES["sgd"], config)
    grads = gradients(0)
    assert shard.open_streamed_push("j", "w0", 0, layout_of(grads), lease, "task-1" if lease else "") is None


def test_a_stream_that_does_not_match_its_variables_is_left_to_the_assembled_push(tmp_path: Path) -> None:
    shard = make_shard(tmp_path, "s", RULES["sgd"])
    shard.register("j", [(VarSpec("emb", F32, (4, 2), row_sharded=True), InitSpec())], None)
    for grads in (
        {"a": np.zeros((5, 3), F32)},  # wrong shape
        {"b": np.zeros(7, F32)},  # wrong dtype
        {"nope": np.zeros(3, F32)},  # no such variable
        {"emb": np.zeros((4, 2), F32)},  # row-sharded: its gradients are rows
    ):
        assert shard.open_streamed_push("j", "w0", 0, layout_of(grads)) is None
    with pytest.raises(InvalidArgument, match="gradient 'a' is float32\\[5,3\\]"):
        shard.push("j", "w0", 0, {"a": np.zeros((5, 3), F32)}, [])
    assert shard.pull("j", ["emb"], [RowValues("emb", np.arange(4))]) is not None


# -- over gRPC -----------------------------------------------------------------------------


def test_a_push_stream_cut_off_midway_applies_nothing(client: ShardClient) -> None:
    n = 1 << 20  # float32 elements: 4 MiB, four 1 MiB chunks
    client.stub.RegisterVariables(
        pb.RegisterVariablesRequest(job_id="j", variables=[var("w", [n], kind="ones")], optimizer=sgd(0.5)),
        timeout=10,
    )
    grad = np.full(n, 2.0, np.float32)
    head = pb.PushRequest(job_id="j", worker_id="w0", step=0)
    head.dense_grads["w"].CopyFrom(tensor.header(grad))
    data = [pb.PushChunk(data=c) for c in tensor.chunks([grad], tensor.CHUNK_BYTES)]

    def broken():
        yield pb.PushChunk(header=head)
        yield from data[:2]
        raise ConnectionError("the worker died mid-push")

    with pytest.raises(grpc.RpcError):
        client.stub.PushStream(broken(), timeout=10)
    pulled = client.stub.Pull(pb.PullRequest(job_id="j", dense=["w"]), timeout=10)
    assert pulled.version == 0
    np.testing.assert_array_equal(tensor.from_proto(pulled.dense["w"]), 1.0)
    # The step was not taken: the worker's retry of it applies, once.
    assert client.stub.PushStream(iter([pb.PushChunk(header=head), *data]), timeout=10).applied
    pulled = client.stub.Pull(pb.PullRequest(job_id="j", dense=["w"]), timeout=10)
    assert pulled.version == 1
    np.testing.assert_array_equal(tensor.from_proto(pulled.dense["w"]), 0.0)
