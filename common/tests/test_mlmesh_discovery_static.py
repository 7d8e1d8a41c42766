"""The static registry's URL grammar, and the registry contract's checks on instances."""

from __future__ import annotations

import asyncio

import pytest
from mlmesh.discovery import Instance, RegistryError, open_registry
from mlmesh.discovery.base import check_registry_url
from mlmesh.discovery.static import StaticRegistry

pytestmark = pytest.mark.unit


def test_static_url_lists_addresses_per_service_sorted() -> None:
    reg = open_registry("static:serving=10.0.0.6:8500,10.0.0.5:8500;ingest=ingest.ml.svc:50051")
    assert isinstance(reg, StaticRegistry)

    async def look() -> tuple[list[str], list[str], tuple[Instance, ...]]:
        serving = [i.addr for i in await reg.healthy("serving")]
        ingest = [i.addr for i in await reg.healthy("ingest")]
        return serving, ingest, await reg.healthy("trainer")

    assert asyncio.run(look()) == (["10.0.0.5:8500", "10.0.0.6:8500"], ["ingest.ml.svc:50051"], ())


def test_static_ipv6_addresses_keep_their_brackets_in_addr() -> None:
    reg = StaticRegistry.parse("serving=[::1]:8500")
    (inst,) = asyncio.run(reg.healthy("serving"))
    assert (inst.host, inst.port, inst.addr) == ("::1", 8500, "[::1]:8500")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("serving", "is not NAME=HOST:PORT"),
        ("serving=", "is not NAME=HOST:PORT"),
        ("serving=host", "'host' is not HOST:PORT"),
        ("serving=host:http", "'host:http' is not HOST:PORT"),
        ("serving=:8500", "':8500' is not HOST:PORT"),
        ("serving=h:0", "port 0, not in 1..65535"),
        ("serving=h:70000", "port 70000, not in 1..65535"),
        ("serving=h:1;serving=h:2", "listed twice"),
        ("Serving=h:1", "service name 'Serving' must match"),
    ],
)
def test_bad_static_specs_are_refused_naming_the_problem(spec: str, reason: str) -> None:
    with pytest.raises(RegistryError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        StaticRegistry.parse(spec)
    with pytest.raises(RegistryError, match="static registry"):
        check_registry_url(f"static:{spec}")


def test_static_watch_follows_local_register_and_deregister() -> None:
    async def scenario() -> list[list[int]]:
        reg = StaticRegistry.parse("serving=h:1")
        seen: list[list[int]] = []
        extra = Instance(service="serving", host="h", port=2)

        async def watcher() -> None:
            async for instances in reg.watch("serving"):
                seen.append([i.port for i in instances])
                if len(seen) == 3:
                    return

        task = asyncio.create_task(watcher())
        await asyncio.sleep(0)
        await reg.register(extra)
        await asyncio.sleep(0)
        await reg.deregister(extra)
        await asyncio.wait_for(task, 5)
        return seen

    assert asyncio.run(scenario()) == [[1], [1, 2], [1]]


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(RegistryError, match="unknown scheme 'etcd'"):
        open_registry("etcd://h:2379")
