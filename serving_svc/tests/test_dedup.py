"""De-duplication core: coalescing, replay for a TTL, eviction by bytes, key reuse, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest

from serving_svc.core.dedup import ENTRY_OVERHEAD, Deduplicator, KeyMismatch, Outcome, Restart

pytestmark = pytest.mark.unit
T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Model:
    """Counts executions; each answers b'answer-<n>' after `delay` seconds (or fails)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.runs = 0
        self.delay = delay
        self.fail: BaseException | None = None

    async def __call__(self) -> bytes:
        self.runs += 1
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return f"answer-{self.runs}".encode()


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def test_concurrent_duplicates_share_one_execution() -> None:
    dedup, model = Deduplicator(ttl_s=10, max_bytes=1 << 20), Model(delay=0.05)

    async def scenario() -> list[tuple[bytes, Outcome]]:
        return await asyncio.gather(*(dedup.run("k", b"d", model) for _ in range(10)))

    results = run(scenario)
    assert model.runs == 1
    assert {answer for answer, _ in results} == {b"answer-1"}
    assert sorted(o.value for _, o in results) == ["coalesced"] * 9 + ["executed"]


def test_completed_answer_is_replayed_within_the_ttl_and_not_after() -> None:
    clock = Clock()
    dedup, model = Deduplicator(ttl_s=10, max_bytes=1 << 20, clock=clock), Model()

    async def scenario() -> list[tuple[bytes, Outcome]]:
        first = await dedup.run("k", b"d", model)
        clock.now += 9.9
        replay = await dedup.run("k", b"d", model)
        clock.now += 0.2
        after = await dedup.run("k", b"d", model)
        return [first, replay, after]

    first, replay, after = run(scenario)
    assert first == (b"answer-1", Outcome.EXECUTED)
    assert replay == (b"answer-1", Outcome.REPLAYED)
    assert after == (b"answer-2", Outcome.EXECUTED)
    assert model.runs == 2


def test_cache_is_bounded_by_bytes_and_evicts_the_oldest_answers() -> None:
    entry = len(b"answer-1") + len("k0") + len(b"d") + ENTRY_OVERHEAD
    dedup, model = Deduplicator(ttl_s=60, max_bytes=2 * entry, clock=Clock()), Model()

    async def scenario() -> list[Outcome]:
        for key in ("k0", "k1", "k2"):
            await dedup.run(key, b"d", model)
        return [(await dedup.run(key, b"d", model))[1] for key in ("k2", "k1", "k0")]

    outcomes = run(scenario)
    assert outcomes == [Outcome.REPLAYED, Outcome.REPLAYED, Outcome.EXECUTED]
    assert dedup.cached_bytes <= 2 * entry and dedup.cached_entries == 2


def test_answer_larger_than_the_cache_is_not_stored() -> None:
    dedup, model = Deduplicator(ttl_s=60, max_bytes=10), Model()

    async def scenario() -> Outcome:
        await dedup.run("k", b"d", model)
        return (await dedup.run("k", b"d", model))[1]

    assert run(scenario) is Outcome.EXECUTED
    assert dedup.cached_bytes == 0


def test_same_key_with_another_request_is_failed_precondition_naming_the_key() -> None:
    dedup, model = Deduplicator(ttl_s=60, max_bytes=1 << 20), Model(delay=0.05)

    async def scenario() -> None:
        running = asyncio.ensure_future(dedup.run("order-7", b"first", model))
        await asyncio.sleep(0.01)
        with pytest.raises(KeyMismatch, match=r"key 'order-7' was already used .* being answered"):
            await dedup.run("order-7", b"second", model)
        await running
        with pytest.raises(KeyMismatch, match=r"'order-7' .*\(it is answered\)") as e:
            await dedup.run("order-7", b"second", model)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION

    run(scenario)
    assert model.runs == 1


def test_failures_reach_the_coalesced_requests_and_are_not_cached() -> None:
    dedup, model = Deduplicator(ttl_s=60, max_bytes=1 << 20), Model(delay=0.05)
    model.fail = ValueError("bad input")

    async def scenario() -> tuple[list[object], tuple[bytes, Outcome]]:
        failed = await asyncio.gather(
            *(dedup.run("k", b"d", model) for _ in range(3)), return_exceptions=True
        )
        model.fail = None
        return failed, await dedup.run("k", b"d", model)

    failed, retried = run(scenario)
    assert all(isinstance(f, ValueError) for f in failed)
    assert retried == (b"answer-2", Outcome.EXECUTED)
    assert dedup.cached_entries == 1


def test_waiters_start_over_when_the_executing_request_gives_up() -> None:
    dedup = Deduplicator(ttl_s=60, max_bytes=1 << 20)
    first, second = Model(delay=0.05), Model(delay=0.01)
    first.fail = Restart()  # e.g. its own client's deadline passed

    async def scenario() -> tuple[object, tuple[bytes, Outcome]]:
        leader = asyncio.ensure_future(dedup.run("k", b"d", first))
        await asyncio.sleep(0.01)
        follower = await dedup.run("k", b"d", second)
        return (await asyncio.gather(leader, return_exceptions=True))[0], follower

    leader, follower = run(scenario)
    assert isinstance(leader, Restart)
    assert follower == (b"answer-1", Outcome.EXECUTED)
    assert (first.runs, second.runs) == (1, 1)


def test_cancelled_execution_hands_over_to_a_waiter() -> None:
    dedup, model = Deduplicator(ttl_s=60, max_bytes=1 << 20), Model(delay=0.05)

    async def scenario() -> tuple[bytes, Outcome]:
        leader = asyncio.ensure_future(dedup.run("k", b"d", model))
        await asyncio.sleep(0.01)
        follower = asyncio.ensure_future(dedup.run("k", b"d", model))
        await asyncio.sleep(0.01)
        leader.cancel()
        return await follower

    assert run(scenario) == (b"answer-2", Outcome.EXECUTED)
