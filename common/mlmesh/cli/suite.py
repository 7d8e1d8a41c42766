"""The local suite: which services `mlmesh up` / `mlmesh demo` start, in what order, where.

Start order (stop runs in reverse): ingest, parameter-server shards, serving
replicas (these three groups start together: none needs another), then the
coordinator (needs ingest and the shards), then the gateway's xDS control plane
(`python -m gateway.xds`, its registry naming the replicas, ingest and the
coordinator), then the gateway (Envoy, configured by the control plane) and the
workers (need the coordinator). A training-only suite (`serving=False`, what
`mlmesh train --workload` starts when none runs) has no serving replicas, no
control plane and no gateway. The admin routes' bearer token is made per suite,
given to the control plane in its environment and written to
`<root>/run/admin_token` (mode 0600).

Everything lives under one root directory:

    <root>/data/                ingest's datasets and queue
    <root>/checkpoints/ps-<i>/  shard checkpoints
    <root>/models/              the model repository (<model>/<version>/)
    <root>/work/                the coordinator's work dir
    <root>/cache/worker-<i>/    worker partition caches
    <root>/gateway/             Envoy's bootstrap and logs
    <root>/run/                 port files, suite.json, logs/<service>.log
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

import mlmesh
from mlmesh.cli.common import SuiteAddresses, console, write_suite
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.paramserver.v1 import paramserver_pb2
from mlmesh.serving.v1 import serving_pb2
from mlmesh.supervisor import ChildInfo, ServiceSpec, Supervisor
from mlmesh.trainer.v1 import trainer_pb2

INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
PS_SERVICE = paramserver_pb2.DESCRIPTOR.services_by_name["ParameterServerService"].full_name
SERVING_SERVICE = serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name
TRAINER_SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
# The control plane's health name (gateway.xds.server.ADS_SERVICE; the CLI does not import gateway).
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

HOST = "127.0.0.1"


@dataclass(frozen=True)
class SuiteConfig:
    root: Path
    shards: int = 2
    replicas: int = 2
    workers: int = 2
    log_level: str = "info"
    ready_timeout: float = 180.0
    grace_seconds: float = 10.0
    serving_poll_seconds: float = 1.0
    base_id: int | None = None
    # Each shard checkpoints a job every N updates or T seconds, so a shard killed mid-job
    # and restarted by the supervisor resumes having lost at most that much.
    checkpoint_every_steps: int = 200
    checkpoint_every_seconds: float = 30.0
    # Serving replicas and the gateway; off for a training-only suite, which then
    # spares two TensorFlow processes and Envoy on a small machine.
    serving: bool = True

    @property
    def run_dir(self) -> Path:
        return self.root / "run"


def source_root() -> Path | None:
    """The checkout holding the service packages, when mlmesh runs from source.

    Children need it on PYTHONPATH to find `ingest_svc` & co. wherever the
    CLI was started from.
    """
    candidate = Path(mlmesh.__file__).resolve().parents[2]
    return candidate if (candidate / "ingest_svc").is_dir() else None


def child_env() -> dict[str, str]:
    src = source_root()
    if src is None:
        return {}
    # mlmesh's own directory too: children must import the same mlmesh as this
    # process, not whichever checkout the environment has installed (a git
    # worktree run with another checkout's venv would otherwise mix the two).
    parts = [
        str(Path(mlmesh.__file__).resolve().parents[1]),
        str(src),
        *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p),
    ]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts))}


def make_supervisor(cfg: SuiteConfig) -> Supervisor:
    return Supervisor(
        cfg.run_dir,
        host=HOST,
        grace_seconds=cfg.grace_seconds,
        log_level=cfg.log_level,
        env=child_env(),
    )


def _addr(info: ChildInfo) -> str:
    return f"{HOST}:{info.port}"


def start_suite(sup: Supervisor, cfg: SuiteConfig) -> SuiteAddresses:
    """Start every service, wait for each to be ready, write suite.json; return the addresses."""
    root = cfg.root.resolve()
    for sub in ("data", "checkpoints", "models", "work", "cache", "gateway"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    t = cfg.ready_timeout

    first = [ServiceSpec("ingest", "ingest_svc", ["--data-dir", str(root / "data")], INGEST_SERVICE, t)]
    first += [
        ServiceSpec(
            f"ps-{i}",
            "paramserver_svc",
            [
                "--shard-index",
                str(i),
                "--num-shards",
                str(cfg.shards),
                "--checkpoint-dir",
                str(root / "checkpoints" / f"ps-{i}"),
                "--checkpoint-every-steps",
                str(cfg.checkpoint_every_steps),
                "--checkpoint-every-seconds",
                str(cfg.checkpoint_every_seconds),
            ],
            PS_SERVICE,
            t,
        )
        for i in range(cfg.shards)
    ]
    first += [
        ServiceSpec(
            f"serving-{i}",
            "serving_svc",
            ["--model-repo", str(root / "models"), "--poll-seconds", str(cfg.serving_poll_seconds)],
            SERVING_SERVICE,
            t,
        )
        for i in range(cfg.replicas if cfg.serving else 0)
    ]
    infos = {i.name: i for i in sup.start_group(first)}
    ingest = _addr(infos["ingest"])
    ps = [_addr(infos[f"ps-{i}"]) for i in range(cfg.shards)]
    serving = [_addr(infos[f"serving-{i}"]) for i in range(cfg.replicas if cfg.serving else 0)]

    coordinator_spec = ServiceSpec(
        "coordinator",
        "trainer_svc",
        [
            "coordinator",
            "--ingest-addr",
            ingest,
            "--ps-addrs",
            ",".join(ps),
            "--model-repo",
            str(root / "models"),
            "--work-dir",
            str(root / "work"),
        ],
        TRAINER_SERVICE,
        t,
    )
    infos.update({i.name: i for i in sup.start_group([coordinator_spec])})
    coordinator = _addr(infos["coordinator"])
    third: list[ServiceSpec] = []
    if cfg.serving:
        # The static registry for now: the addresses this supervisor knows (it restarts
        # children on their old ports, so they stay true).
        registry = f"static:serving={','.join(serving)};ingest={ingest};trainer={coordinator}"
        xds = ServiceSpec(
            "xds",
            "gateway.xds",
            ["--registry", registry, "--metrics-port", "0"],
            ADS_SERVICE,
            t,
            env={"MLMESH_XDS_ADMIN_TOKEN": admin_token(cfg.run_dir)},
        )
        infos.update({i.name: i for i in sup.start_group([xds])})
        base_id = cfg.base_id if cfg.base_id is not None else os.getpid()
        third.append(
            ServiceSpec(
                "gateway",
                "gateway",
                [
                    "--xds-addr",
                    _addr(infos["xds"]),
                    "--work-dir",
                    str(root / "gateway"),
                    "--admin-port",
                    "0",
                    "--base-id",
                    str(base_id),
                ],
                None,  # its port file is written once Envoy's /ready answers 200 (CDS and LDS arrived)
                t,
            )
        )
    third += [
        ServiceSpec(
            f"worker-{i}",
            "trainer_svc",
            [
                "worker",
                "--coordinator-addr",
                coordinator,
                "--worker-id",
                f"worker-{i}",
                "--cache-dir",
                str(root / "cache" / f"worker-{i}"),
            ],
            "",
            t,
        )
        for i in range(cfg.workers)
    ]
    infos.update({i.name: i for i in sup.start_group(third)})
    gw = infos.get("gateway")
    admin_port = gw.ports.get("admin_port") if gw is not None else None
    addrs = SuiteAddresses(
        root=root,
        ingest=ingest,
        ps=ps,
        coordinator=coordinator,
        workers=[_addr(infos[f"worker-{i}"]) for i in range(cfg.workers)],
        serving=serving,
        gateway_http=_addr(gw) if gw is not None else "",
        gateway_grpc=_addr(gw) if gw is not None else "",
        admin=f"{HOST}:{admin_port}" if admin_port else "",
        model_repo=str(root / "models"),
        supervisor_pid=os.getpid(),
    )
    refresh_suite_file(sup, addrs)
    return addrs


def admin_token(run_dir: Path) -> str:
    """A new bearer token for the gateway's admin routes, kept readable by this user only."""
    token = secrets.token_urlsafe(32)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp, path = run_dir / ".admin_token.tmp", run_dir / "admin_token"
    tmp.unlink(missing_ok=True)
    # Created 0600: never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token.encode())
    os.replace(tmp, path)
    return token


def refresh_suite_file(sup: Supervisor, addrs: SuiteAddresses) -> None:
    """Rewrite suite.json with the children's current pids, states and restarts."""
    addrs.services = [
        {
            "name": c.name,
            "addr": c.addr if c.port else "",
            "pid": c.pid,
            "state": c.state,
            "restarts": c.restarts,
            "metrics_port": c.ports.get("metrics_port"),
            "log": str(c.log_path),
        }
        for c in sup.children()
    ]
    gw = next((c for c in sup.children() if c.name == "gateway"), None)
    if gw is not None and gw.ports.get("admin_port"):
        addrs.admin = f"{HOST}:{gw.ports['admin_port']}"
    write_suite(addrs)


def services_table(sup: Supervisor) -> Table:
    table = Table(title="mlmesh suite")
    for col in ("service", "address", "pid", "state", "restarts", "metrics"):
        table.add_column(col, no_wrap=True)
    for c in sup.children():
        metrics = c.ports.get("metrics_port")
        table.add_row(
            c.name,
            c.addr if c.port else "-",
            str(c.pid or "-"),
            c.state,
            str(c.restarts),
            str(metrics) if metrics and metrics > 0 else "-",
        )
    return table


def serve_forever(sup: Supervisor, addrs: SuiteAddresses) -> None:
    """Keep the suite up until Ctrl-C/SIGTERM (KeyboardInterrupt), reporting restarts."""
    console.print(services_table(sup))
    console.print(
        f"gateway http://{addrs.gateway_http}  grpc {addrs.gateway_grpc}  admin {addrs.admin or '-'}\n"
        f"suite file {addrs.root / 'run' / 'suite.json'}, logs in {sup.logs_dir}/\n"
        "press Ctrl-C to stop everything"
    )
    seen = len(sup.events)
    while True:
        time.sleep(0.5)
        events = sup.events[seen:]
        seen += len(events)
        for _, name, what in events:
            if what in ("exited", "restarted", "failed"):
                console.print(f"[yellow]{name}: {what}[/]")
        if events:
            refresh_suite_file(sup, addrs)
