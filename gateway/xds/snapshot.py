"""Versioned snapshots: every resource Envoy may ask for, at one moment.

A snapshot is immutable. Versions are content hashes of the resources a
response carries, so a restarted control plane offers Envoy the very versions
it already holds (nothing changes, nothing drains), and an unchanged type is
never re-pushed when another type changes. `serial` counts snapshots for logs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2
from mlmesh.discovery import Instance

from gateway.xds import resources as rs
from gateway.xds.config import GatewayConfig

# Resource types in the order a change is pushed: clusters and their endpoints before the
# listeners and routes that use them (make before break).
PUSH_ORDER = (rs.CLUSTER_TYPE, rs.ENDPOINT_TYPE, rs.LISTENER_TYPE, rs.ROUTE_TYPE)
# LDS and CDS are state-of-the-world wildcards: a response holds them all (omission deletes).
WILDCARD_TYPES = frozenset({rs.LISTENER_TYPE, rs.CLUSTER_TYPE})

Ports = tuple[tuple[str, int], ...]


def version_of(resources: Sequence[any_pb2.Any]) -> str:
    digest = hashlib.sha256()
    for r in resources:
        digest.update(r.type_url.encode())
        digest.update(len(r.value).to_bytes(8, "big"))
        digest.update(r.value)
    return digest.hexdigest()[:16]


def _named(messages: Sequence[Any], attr: str = "name") -> dict[str, any_pb2.Any]:
    out: dict[str, any_pb2.Any] = {}
    for m in messages:
        a = any_pb2.Any()
        a.Pack(m, deterministic=True)
        out[getattr(m, attr)] = a
    return out


@dataclass(frozen=True)
class Snapshot:
    """CDS, EDS and RDS resources by name; LDS built per node (its listener ports)."""

    serial: int
    resources: Mapping[str, Mapping[str, any_pb2.Any]]
    listeners: Callable[[Ports], Mapping[str, any_pb2.Any]]
    _lds_cache: dict[Ports, Mapping[str, any_pb2.Any]] = field(default_factory=dict, compare=False)

    def select(self, type_url: str, names: Sequence[str], ports: Ports = ()) -> tuple[list[any_pb2.Any], str]:
        """The resources a response carries and their version: all of a wildcard type,
        the requested ones (that exist) of RDS and EDS."""
        if type_url == rs.LISTENER_TYPE:
            if ports not in self._lds_cache:
                self._lds_cache[ports] = self.listeners(ports)
            pool = self._lds_cache[ports]
        else:
            pool = self.resources.get(type_url, {})
        if type_url in WILDCARD_TYPES:
            chosen = [pool[n] for n in sorted(pool)]
        else:
            chosen = [pool[n] for n in sorted(set(names)) if n in pool]
        return chosen, version_of(chosen)


def build_snapshot(
    serial: int,
    config: GatewayConfig,
    endpoints: Mapping[str, Sequence[Instance]],
    *,
    descriptor_set: bytes,
    admin_token: str | None,
) -> Snapshot:
    def listeners(ports: Ports) -> Mapping[str, any_pb2.Any]:
        given = dict(ports)
        return _named(
            [
                rs.build_listener(
                    x, descriptor_set=descriptor_set, admin_token=admin_token, port=given.get(x.name)
                )
                for x in config.listeners
            ]
        )

    return Snapshot(
        serial=serial,
        resources={
            rs.CLUSTER_TYPE: _named(rs.build_clusters(config)),
            rs.ENDPOINT_TYPE: _named(rs.build_load_assignments(config, endpoints), "cluster_name"),
            rs.ROUTE_TYPE: _named([rs.build_routes(config, x) for x in config.listeners]),
        },
        listeners=listeners,
    )
