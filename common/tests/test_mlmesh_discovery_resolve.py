"""Peers by name: shard ordering from meta["shard"], and a Follower handing moves to its client."""

from __future__ import annotations

import asyncio

import pytest
from mlmesh.discovery import Instance, RegistryError
from mlmesh.discovery.resolve import Follower, shard_addrs, single_addr
from mlmesh.discovery.static import StaticRegistry

pytestmark = pytest.mark.unit


def _shard(index: int | str, port: int, **meta: str) -> Instance:
    return Instance(
        service="paramserver",
        host="127.0.0.1",
        port=port,
        instance_id=f"ps-{port}",
        meta={"shard": str(index), **meta},
    )


def test_shards_are_ordered_by_their_index_not_their_id() -> None:
    shards = [_shard(1, 7001), _shard(0, 7002), _shard(2, 7000)]
    assert shard_addrs(shards) == ["127.0.0.1:7002", "127.0.0.1:7001", "127.0.0.1:7000"]


def test_an_incomplete_shard_set_is_not_used() -> None:
    assert shard_addrs([_shard(0, 7000), _shard(2, 7002)]) is None
    # The shards say there are 3; only 2 are up.
    assert shard_addrs([_shard(0, 7000, num_shards="3"), _shard(1, 7001, num_shards="3")]) is None
    assert shard_addrs([]) is None


def test_a_shard_without_an_index_is_ignored() -> None:
    no_index = Instance(service="paramserver", host="127.0.0.1", port=7009)
    assert shard_addrs([_shard(0, 7000), no_index, _shard("x", 7008)]) == ["127.0.0.1:7000"]


def test_single_service_takes_the_first_instance() -> None:
    assert single_addr([]) is None
    assert single_addr([Instance(service="ingest", host="h", port=1)]) == ["h:1"]


def test_follower_returns_the_first_set_then_applies_moves() -> None:
    async def scenario() -> tuple[list[str], list[list[str]]]:
        reg = StaticRegistry.parse("")
        old, new = _shard(0, 7000), _shard(0, 7100)
        moves: list[list[str]] = []
        await reg.register(old)
        follower = Follower(reg, "paramserver", moves.append, shards=True)
        first = await follower.start(timeout=5)
        await reg.register(new)  # the restarted shard shows up before the old one leaves...
        await asyncio.sleep(0.05)
        await reg.deregister(old)  # ...and the old one goes
        for _ in range(100):
            if moves:
                break
            await asyncio.sleep(0.01)
        await follower.close()
        return first, moves

    first, moves = asyncio.run(scenario())
    assert first == ["127.0.0.1:7000"]
    assert moves == [["127.0.0.1:7100"]]


def test_follower_gives_up_after_its_timeout_naming_the_service() -> None:
    async def scenario() -> None:
        follower = Follower(StaticRegistry.parse(""), "ingest", lambda addrs: None)
        await follower.start(timeout=0.2)

    with pytest.raises(RegistryError, match=r"no healthy 'ingest' instances in the registry within 0\.2s"):
        asyncio.run(scenario())
