"""`file:///DIR`: the embedded registry for one machine.

Layout: `<DIR>/<service>/<instance_id>.json`, one record per instance, written
atomically on `register` and removed on `deregister`:

    {"service": ..., "instance_id": ..., "host": ..., "port": ..., "health_service": ...,
     "meta": {...}, "pid": ..., "hostname": ..., "registered_at": ...}

A record only says where an instance was started. Whether it is alive comes from
`grpc.health.v1`: the checker of a service (one per process, shared by all its
watchers) rescans the directory and Checks every recorded instance each
`interval`, so a `kill -9`'d instance drops out of `healthy()` within about one
interval and comes back when it answers SERVING again. A record that does not
parse is skipped with a warning naming the file (once per version of the file).
A record whose process is gone (same hostname, pid no longer running) and that has
been unreachable for `reap_after` seconds is deleted, so crashed instances do not
accumulate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlmesh.discovery.base import Instance, RegistryError
from mlmesh.discovery.monitor import Monitors, Publish
from mlmesh.files import atomic_write_json, fsync_dir
from mlmesh.logging import get_logger

log = get_logger(__name__)

# Reconnect quickly to an instance that was down: the default backoff grows to two minutes.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
]
# A Check that times out once may be a busy process; twice in a row and it is out.
_TIMEOUTS_TO_UNHEALTHY = 2
# (inode, mtime_ns, size): which version of a record file was read.
_Key = tuple[int, int, int]


def record_path(root: Path, instance: Instance) -> Path:
    return root / instance.service / f"{instance.instance_id}.json"


def _check_id(instance: Instance) -> None:
    iid = instance.instance_id
    if "/" in iid or "\0" in iid or iid.startswith(".") or len(iid) > 200:
        raise RegistryError(
            f"instance id {iid!r} cannot name a file (no '/', no leading '.', at most 200 characters)"
        )


def parse_record(path: Path, data: bytes) -> Instance:
    """The instance a record file describes; RegistryError naming the file and the problem."""
    try:
        rec = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegistryError(f"registry record {path}: not JSON ({e})") from None
    if not isinstance(rec, dict):
        raise RegistryError(f"registry record {path}: expected a JSON object, got {type(rec).__name__}")
    host, port = rec.get("host"), rec.get("port")
    if not isinstance(host, str) or not host:
        raise RegistryError(f"registry record {path}: field 'host' must be a non-empty string, got {host!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise RegistryError(f"registry record {path}: field 'port' must be an integer 1..65535, got {port!r}")
    health_service = rec.get("health_service", "")
    if not isinstance(health_service, str):
        raise RegistryError(f"registry record {path}: field 'health_service' must be a string")
    meta = rec.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise RegistryError(f"registry record {path}: field 'meta' must map strings to strings")
    try:
        return Instance(
            service=path.parent.name,
            host=host,
            port=port,
            instance_id=path.stem,
            health_service=health_service,
            meta=meta,
        )
    except RegistryError as e:
        raise RegistryError(f"registry record {path}: {e}") from None


@dataclass
class _Tracked:
    """One record being checked: its instance, its channel and what the checks said."""

    instance: Instance
    key: _Key  # (inode, mtime_ns, size): the record version this came from
    pid: int | None
    hostname: str | None
    channel: grpc.aio.Channel
    healthy: bool = False
    timeouts: int = 0
    down_since: float | None = field(default=None)

    async def check(self, timeout: float) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        req = health_pb2.HealthCheckRequest(service=self.instance.health_service)
        try:
            resp = await stub.Check(req, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.timeouts += 1
                up = self.healthy and self.timeouts < _TIMEOUTS_TO_UNHEALTHY
            else:  # refused (the process is gone), NOT_FOUND (unknown health service), ...
                up = False
        else:
            self.timeouts = 0
            up = resp.status == health_pb2.HealthCheckResponse.SERVING
        self.healthy = up
        if up:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = time.monotonic()


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class FileRegistry:
    """Records in a directory, liveness from grpc.health.v1. One event loop per instance of this class."""

    def __init__(
        self,
        root: Path,
        *,
        interval: float = 0.5,
        check_timeout: float = 1.0,
        reap_after: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.interval = interval
        self.check_timeout = check_timeout
        self.reap_after = reap_after
        self._hostname = socket.gethostname()
        self._monitors = Monitors(self._follow)

    @classmethod
    def from_url(cls, url: str) -> FileRegistry:
        return cls(file_url_path(url))

    # --- producers --------------------------------------------------------

    async def register(self, instance: Instance) -> None:
        _check_id(instance)
        record = {
            "service": instance.service,
            "instance_id": instance.instance_id,
            "host": instance.host,
            "port": instance.port,
            "health_service": instance.health_service,
            "meta": dict(instance.meta),
            "pid": os.getpid(),
            "hostname": self._hostname,
            "registered_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        # fsyncs: off the event loop.
        await asyncio.to_thread(atomic_write_json, record_path(self.root, instance), record)

    async def deregister(self, instance: Instance) -> None:
        _check_id(instance)
        path = record_path(self.root, instance)

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                fsync_dir(path.parent)

        await asyncio.to_thread(remove)

    # --- consumers --------------------------------------------------------

    async def healthy(self, service: str) -> tuple[Instance, ...]:
        return await self._monitors.healthy(service)

    def watch(self, service: str) -> AsyncIterator[tuple[Instance, ...]]:
        return self._monitors.watch(service)

    async def close(self) -> None:
        await self._monitors.close()

    # --- the checker of one service ---------------------------------------

    async def _follow(self, service: str, publish: Publish) -> None:
        tracked: dict[Path, _Tracked] = {}
        bad: dict[Path, _Key] = {}  # records already warned about, by version
        try:
            while True:
                self._scan(self.root / service, tracked, bad)
                if tracked:
                    await asyncio.gather(*(t.check(self.check_timeout) for t in tracked.values()))
                await publish(t.instance for t in tracked.values() if t.healthy)
                await self._reap(tracked)
                await asyncio.sleep(self.interval)
        finally:
            for t in tracked.values():
                await t.channel.close()

    def _scan(self, folder: Path, tracked: dict[Path, _Tracked], bad: dict[Path, _Key]) -> None:
        seen: set[Path] = set()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue  # temp files of atomic writes start with "."
            path = Path(entry.path)
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            seen.add(path)
            old = tracked.get(path)
            if (old is not None and old.key == key) or bad.get(path) == key:
                continue
            try:
                data = path.read_bytes()
                instance = parse_record(path, data)
                rec: dict[str, Any] = json.loads(data)
            except FileNotFoundError:
                continue
            except RegistryError as e:
                bad[path] = key
                log.warning("ignoring malformed registry record", file=str(path), error=str(e))
                if old is not None:
                    tracked.pop(path)
                    asyncio.get_running_loop().create_task(old.channel.close())
                continue
            bad.pop(path, None)
            pid, hostname = rec.get("pid"), rec.get("hostname")
            owner = (
                pid if isinstance(pid, int) and pid > 0 else None,
                hostname if isinstance(hostname, str) else None,
            )
            if old is not None and old.instance == instance:
                # Re-registered at the same address (maybe by a restarted process): keep the
                # channel and health, take the new owner (the reaper judges by it).
                old.key, (old.pid, old.hostname) = key, owner
                continue
            if old is not None:
                asyncio.get_running_loop().create_task(old.channel.close())
            tracked[path] = _Tracked(
                instance=instance,
                key=key,
                pid=owner[0],
                hostname=owner[1],
                channel=grpc.aio.insecure_channel(instance.addr, options=_CHANNEL_OPTIONS),
            )
        for path in set(tracked) - seen:
            asyncio.get_running_loop().create_task(tracked.pop(path).channel.close())
        for path in set(bad) - seen:
            bad.pop(path)

    async def _reap(self, tracked: dict[Path, _Tracked]) -> None:
        now = time.monotonic()
        for path, t in list(tracked.items()):
            if (
                t.down_since is not None
                and now - t.down_since >= self.reap_after
                and t.pid is not None
                and t.hostname == self._hostname
                and _pid_gone(t.pid)
            ):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                log.info(
                    "removed the record of a dead instance",
                    file=str(path),
                    pid=t.pid,
                    down_seconds=round(now - t.down_since, 1),
                )
                tracked.pop(path)
                await t.channel.close()


def file_url_path(url: str) -> Path:
    """The directory of `file:///DIR` (absolute; `file://localhost/DIR` too); RegistryError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise RegistryError(f"registry URL {url!r} is not a file: URL")
    if parts.netloc not in ("", "localhost"):
        raise RegistryError(
            f"registry URL {url!r}: file registries are local; use file:///ABSOLUTE/DIR (no host)"
        )
    if parts.query or parts.fragment:
        raise RegistryError(f"registry URL {url!r}: file: URLs take no query or fragment")
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise RegistryError(
            f"registry URL {url!r}: needs an absolute directory, as in file:///var/lib/mlmesh"
        )
    return Path(path)
