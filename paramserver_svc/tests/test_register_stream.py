"""RegisterVariablesStream: initial values bigger than one gRPC message are registered as a
header plus chunks (the PushStream framing), with RegisterVariables' rules: idempotent, all or
nothing (a broken stream creates nothing) and validated (every error names its variable)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from mlmesh import keys, tensor
from mlmesh.paramserver.v1 import paramserver_pb2 as pb

from paramserver_svc.tests.conftest import ShardClient, expect_status, sgd, var

pytestmark = pytest.mark.unit

IA = grpc.StatusCode.INVALID_ARGUMENT
F32 = np.dtype(np.float32)
BIG_ROWS = 5 * 1024 * 1024 // (64 * 4) + 1  # a slice of just over 5 MiB: above gRPC's 4 MiB default


def header_var(name: str, value: np.ndarray, **kw) -> pb.VariableSpec:
    """A variable whose initial value travels in the chunks: the header has its dtype and shape."""
    v = var(name, list(value.shape), **kw)
    v.initializer.kind = "value"
    v.initializer.value.CopyFrom(tensor.header(value))
    return v


def stream_of(
    variables: list[pb.VariableSpec], values: list[np.ndarray], size: int = 1 << 20, job_id: str = "j"
) -> list[pb.RegisterChunk]:
    head = pb.RegisterVariablesRequest(job_id=job_id, variables=variables, optimizer=sgd())
    return [pb.RegisterChunk(header=head)] + [pb.RegisterChunk(data=p) for p in tensor.chunks(values, size)]


def register_stream(stub, messages: list[pb.RegisterChunk]) -> pb.RegisterVariablesResponse:
    return stub.RegisterVariablesStream(iter(messages), timeout=30)


def pull_all(stub, name: str) -> np.ndarray:
    chunks = list(stub.PullStream(pb.PullRequest(job_id="j", dense=[name]), timeout=30))
    asm = tensor.Assembler([(name, chunks[0].header.dense[name])], 1 << 30)
    for c in chunks[1:]:
        asm.feed(c.data)
    return asm.finish()[0]


def test_a_value_too_big_for_one_message_registers_through_the_stream(make_shards) -> None:
    s0, s1 = make_shards(2)
    emb = np.random.default_rng(0).normal(size=(2 * BIG_ROWS, 64)).astype(F32)
    bias = np.arange(3, dtype=F32)
    for i, sc in enumerate((s0, s1)):
        part = emb[keys.row_placement(len(emb), 2, keys.RowLayout.HASH).owner(np.arange(len(emb))) == i]
        assert part.nbytes > 4.5 * (1 << 20)
        whole = pb.RegisterVariablesRequest(
            job_id="j", variables=[var("emb", list(emb.shape), row_sharded=True, kind="value", value=part)],
            optimizer=sgd(),
        )  # fmt: skip
        # The single message is over the limit; the stream is not.
        expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, sc.stub.RegisterVariables, whole)
        v = header_var("emb", part, row_sharded=True)
        v.shape[:] = list(emb.shape)  # the global shape; the header tensor is this shard's slice
        resp = register_stream(sc.stub, stream_of([v, header_var("bias", bias)], [part, bias]))
        assert list(resp.created) == ["emb", "bias"] and not resp.existing
        np.testing.assert_array_equal(pull_all(sc.stub, "emb"), part)
        np.testing.assert_array_equal(pull_all(sc.stub, "bias"), bias)
        # Idempotent: registering again (a restarted coordinator) reports `existing`, keeps the
        # current value (here changed by a push) and changes nothing.
        g = np.ones(3, F32)
        sc.stub.JoinJob(pb.JoinJobRequest(job_id="j", worker_id="w"), timeout=10)
        push = pb.PushRequest(job_id="j", worker_id="w", step=0, dense_grads={"bias": tensor.to_proto(g)})
        sc.stub.Push(push, timeout=10)
        again = register_stream(sc.stub, stream_of([v, header_var("bias", bias)], [part, np.zeros(3, F32)]))
        assert not again.created and list(again.existing) == ["emb", "bias"]
        np.testing.assert_allclose(pull_all(sc.stub, "bias"), bias - 0.5 * g)


def test_streamed_and_inline_values_and_other_initializers_mix(client: ShardClient) -> None:
    big = np.arange(10, dtype=F32)
    small = np.array([7, 8], dtype=np.int64)
    head = pb.RegisterVariablesRequest(
        job_id="j", optimizer=sgd(),
        variables=[header_var("big", big), var("ones", [2], kind="ones"), header_var("ids", small,
                   dtype=tensor.DType.DTYPE_INT64)],
    )  # fmt: skip
    messages = [pb.RegisterChunk(header=head)] + [
        pb.RegisterChunk(data=p) for p in tensor.chunks([big, small], 7)
    ]
    assert list(register_stream(client.stub, messages).created) == ["big", "ones", "ids"]
    np.testing.assert_array_equal(pull_all(client.stub, "big"), big)
    np.testing.assert_array_equal(pull_all(client.stub, "ones"), np.ones(2, F32))
    np.testing.assert_array_equal(pull_all(client.stub, "ids"), small)


A = np.ones((2, 3), F32)  # 24 bytes
B = np.ones(4, F32)  # 16 bytes


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda m: m[1:], "first RegisterVariablesStream message must carry the header"),
        (lambda m: [], "first RegisterVariablesStream message must carry the header"),
        # Short: the message names the variable the stream ended in and what it needs.
        (
            lambda m: m[:-1],
            "ended inside the initial value of variable 'b': 11 of the 16 bytes that float32[4]",
        ),
        (lambda m: m[:3], "ended inside the initial value of variable 'a': 14 of the 24 bytes"),
        (
            lambda m: [*m, pb.RegisterChunk(data=b"\0")],
            "more bytes (41) than its variables' initial values need (40; the last streamed one is 'b')",
        ),
        (lambda m: [*m, pb.RegisterChunk(header=m[0].header)], "only the first RegisterVariablesStream"),
    ],
)
def test_a_broken_stream_creates_nothing(client: ShardClient, mutate, needle: str) -> None:
    messages = stream_of([header_var("a", A), header_var("b", B)], [A, B], size=7)  # 40 bytes
    expect_status(IA, lambda req, timeout: register_stream(client.stub, req), mutate(messages), needle)
    info = client.stub.GetShardInfo(pb.GetShardInfoRequest(), timeout=10)
    assert not info.variables and not info.jobs  # all or nothing


def test_a_header_value_that_does_not_fit_its_variable_is_refused_naming_it(client: ShardClient) -> None:
    v = header_var("a", A)
    v.shape[:] = [3, 3]  # the variable is [3,3]; the streamed value [2,3]
    expect_status(
        IA, lambda req, timeout: register_stream(client.stub, req), stream_of([v], [A]),
        "initial value of variable 'a' is float32[2,3] but this shard's slice is float32[3,3]",
    )  # fmt: skip
    content = header_var("b", B)
    content.initializer.value.content = B.tobytes()  # bytes belong in the chunks
    expect_status(
        IA, lambda req, timeout: register_stream(client.stub, req), stream_of([content], []),
        "tensor 'b' in a stream header carries 16 bytes of content",
    )  # fmt: skip
    no_value = var("c", [2], kind="value")
    expect_status(
        IA, lambda req, timeout: register_stream(client.stub, req), stream_of([no_value], []),
        "variable 'c' has initializer 'value' but the stream header gives no value tensor",
    )  # fmt: skip
    assert not client.stub.GetShardInfo(pb.GetShardInfoRequest(), timeout=10).variables
