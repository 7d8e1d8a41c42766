"""What every CLI command shares: the console, suite.json, and failing clearly."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
import typer
from rich.console import Console

from mlmesh.clients import HttpError, rpc_error_text
from mlmesh.files import atomic_write_json

console = Console()
err_console = Console(stderr=True)

DEFAULT_ROOT = Path(".mlmesh")
SUITE_FILE = "run/suite.json"


def fail(message: str, code: int = 1) -> NoReturn:
    # soft_wrap: paths and addresses in errors must stay copy-pastable.
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def rpc_errors(what: str) -> Iterator[None]:
    """Turn a failed call into a one-line error and exit 1."""
    try:
        yield
    except grpc.RpcError as e:
        fail(f"{what}: {rpc_error_text(e)}")
    except HttpError as e:
        fail(f"{what}: {e}")
    except OSError as e:
        fail(f"{what}: {e}")


@dataclass
class SuiteAddresses:
    """Where the services of a running suite listen (the contents of suite.json)."""

    root: Path
    ingest: str = ""
    ps: list[str] = field(default_factory=list)
    coordinator: str = ""
    workers: list[str] = field(default_factory=list)
    serving: list[str] = field(default_factory=list)
    gateway_http: str = ""
    gateway_grpc: str = ""
    admin: str = ""
    model_repo: str = ""
    supervisor_pid: int = 0
    services: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "root": str(self.root),
            "supervisor_pid": self.supervisor_pid,
            "ingest": self.ingest,
            "ps": self.ps,
            "coordinator": self.coordinator,
            "workers": self.workers,
            "serving": self.serving,
            "gateway_http": self.gateway_http,
            "gateway_grpc": self.gateway_grpc,
            "admin": self.admin,
            "model_repo": self.model_repo,
            "services": self.services,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuiteAddresses:
        return cls(
            root=Path(data.get("root", ".")),
            ingest=data.get("ingest", ""),
            ps=list(data.get("ps", [])),
            coordinator=data.get("coordinator", ""),
            workers=list(data.get("workers", [])),
            serving=list(data.get("serving", [])),
            gateway_http=data.get("gateway_http", ""),
            gateway_grpc=data.get("gateway_grpc", ""),
            admin=data.get("admin", ""),
            model_repo=data.get("model_repo", ""),
            supervisor_pid=int(data.get("supervisor_pid", 0)),
            services=list(data.get("services", [])),
        )


def suite_path(root: Path) -> Path:
    return root / SUITE_FILE


def write_suite(addrs: SuiteAddresses) -> Path:
    """Atomically (temp, fsync, rename), so a reader never sees half a file."""
    path = suite_path(addrs.root)
    atomic_write_json(path, addrs.to_json())
    return path


def read_suite(root: Path) -> SuiteAddresses | None:
    path = suite_path(root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        fail(f"cannot read {path}: {e}")
    return SuiteAddresses.from_json(data)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve(root: Path, value: str | None, key: str, flag: str) -> str:
    """An address from a flag, else from suite.json; a clear error if neither has it."""
    if value:
        return value
    suite = read_suite(root)
    if suite is None:
        fail(
            f"no {flag} given and no running suite "
            f"({suite_path(root)} is missing; start one with `mlmesh up`)"
        )
    addr = getattr(suite, key)
    if not addr:
        fail(f"{suite_path(root)} has no {key} address; pass {flag}")
    return str(addr)


def parse_kv(pairs: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"{what} {pair!r} is not of the form key=value")
        out[key] = value
    return out
