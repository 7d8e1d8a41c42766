"""deploy/: `make deploy-check` fails on a broken manifest naming it, and every image's command,
with that image's environment, starts a service that reports SERVING to the image's own
HEALTHCHECK (local processes: there is no container engine here or in CI).

What the tests change from the images, and why: ports become 0 and hosts 127.0.0.1 (loopback,
ephemeral ports), paths under /var and /etc move into a temporary directory, and the registry
is a file:// one (compose and Kubernetes use consul://). Packages an image does not install
are made unimportable (a sitecustomize import blocker), so a service that needs one fails here
as it would in its container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "deploy" / "docker"
COMPOSE = yaml.safe_load((REPO / "deploy" / "compose" / "compose.yaml").read_text())

# Import names of the optional heavy packages, by the requirement that brings them.
PROVIDES = {
    "tensorflow": {"tensorflow", "keras"},
    "tensorflow-serving-api": {"tensorflow_serving"},
    "pyyaml": {"yaml"},
    "typer": {"typer"},
    "isal": {"isal"},
}
NEVER_IN_IMAGES = {"pyarrow", "tf_keras", "ray", "recbole", "torch"}

BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed in this image)", name=name)
        return None
sys.meta_path.insert(0, _NotInImage())
"""


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [sys.executable, str(REPO / "deploy" / "check.py"), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def copy_tree(dst: Path) -> Path:
    shutil.copytree(REPO / "deploy", dst / "deploy", symlinks=True)
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    (dst / "gateway").mkdir()
    shutil.copy(REPO / "gateway" / "gateway.yaml", dst / "gateway" / "gateway.yaml")
    return dst


@pytest.mark.unit
def test_deploy_check_passes_on_the_tree_and_names_a_broken_manifest(tmp_path: Path) -> None:
    ok = run_check(copy_tree(tmp_path / "good"))
    assert ok.returncode == 0, ok.stderr
    assert "deploy-check: ok" in ok.stdout

    root = copy_tree(tmp_path / "broken")
    serving = root / "deploy" / "k8s" / "base" / "serving.yaml"
    serving.write_text(
        serving.read_text().replace(
            "image: mlmesh/serving", "image: mlmesh/serving\n          imagePulPolicy: Always"
        )
    )
    ingest = root / "deploy" / "k8s" / "base" / "ingest.yaml"
    ingest.write_text(
        ingest.read_text().replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
    )
    bad = run_check(root)
    assert bad.returncode == 1
    assert (
        "deploy/k8s/overlays/dev: Deployment serving: spec.template.spec.containers.0: Additional properties "
        "are not allowed ('imagePulPolicy' was unexpected) (Kubernetes 1.33.0 schema)" in bad.stderr
    )
    assert (
        "deploy/k8s/overlays/prod: StatefulSet ingest spec.template container ingest: "
        "securityContext.readOnlyRootFilesystem must be true" in bad.stderr
    )


@pytest.mark.unit
def test_deploy_check_names_a_broken_dockerfile_compose_file_and_workflow(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    dockerfile = root / "deploy" / "docker" / "ingest.Dockerfile"
    dockerfile.write_text(re.sub(r"^USER .*$", "USER root", dockerfile.read_text(), flags=re.M))
    compose = root / "deploy" / "compose" / "compose.yaml"
    compose.write_text(
        compose.read_text().replace("MLMESH_PS_NUM_SHARDS: '2'", "MLMESH_PS_NUM_SHARDS: '3'", 1)
    )
    workflow = root / "deploy" / "workflows" / "pipeline.yaml"
    workflow.write_text(workflow.read_text().replace("      memoize:", "      memoise:"))
    bad = run_check(root)
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert "deploy/docker/ingest.Dockerfile: the final stage must switch to a non-root USER" in lines
    assert any(line.startswith("deploy/docker/ingest.Dockerfile: hadolint: DL3002") for line in lines)
    assert (
        "deploy/compose/compose.yaml: service paramserver-0: MLMESH_PS_NUM_SHARDS=3 but there are 2 shards"
        in lines
    )
    assert (
        "deploy/workflows/pipeline.yaml: spec.templates[1].memoise: unknown field (Argo's WorkflowTemplate)"
        in lines
    )


# --- each image's command, started as a local process ------------------------------------


def final_stage(dockerfile: Path) -> str:
    text = dockerfile.read_text().replace("\\\n", " ")
    return text[text.rfind("\nFROM ") :]


def image_env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in final_stage(dockerfile).splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    env.pop("PATH")  # /opt/venv/bin: here the test's interpreter
    env.pop("HOME")  # /tmp (a writable home under a read-only root): here the test's temporary directory
    return env


def image_cmd(dockerfile: Path) -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", final_stage(dockerfile), re.M).group(1))


def image_healthcheck(dockerfile: Path) -> list[str]:
    return json.loads(re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", final_stage(dockerfile), re.M).group(1))


def blocked_modules(image: str) -> set[str]:
    provided: set[str] = set()

    def read(path: Path) -> None:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("-r "):
                read(path.parent / line[3:])
            elif line and not line.startswith("#"):
                provided.update(PROVIDES.get(re.split(r"[\[=<>]", line)[0].lower(), ()))

    read(DOCKER / "requirements" / f"{image}.txt")
    return (set().union(*PROVIDES.values()) - provided) | NEVER_IN_IMAGES


# The services compose.yaml runs, each with its image.
SERVICES = [
    ("ingest", "ingest"),
    ("paramserver-0", "paramserver"),
    ("trainer", "trainer"),
    ("worker-0", "trainer"),
    ("serving-0", "serving"),
    ("xds", "gateway"),
    ("gateway", "gateway"),
]


def deployment_env(name: str, registry: str, token: str) -> dict[str, str]:
    """What compose.yaml adds to the image's environment, with this test's registry and token."""
    env = {k: str(v) for k, v in (COMPOSE["services"][name].get("environment") or {}).items()}
    for key in env:
        if key.endswith("_REGISTRY"):
            env[key] = registry
        elif key == "MLMESH_XDS_ADMIN_TOKEN":
            env[key] = token
        elif key == "MLMESH_PS_NUM_SHARDS":
            env[key] = "1"  # one shard is started here
    env.pop("MLMESH_GATEWAY_XDS_ADDR", None)  # set once the control plane has its port
    return env


class Proc:
    def __init__(
        self, name: str, popen: subprocess.Popen[bytes], port_file: Path, log: Path, health: list[str]
    ) -> None:
        self.name, self.popen, self.port_file, self.log, self.health = name, popen, port_file, log, health
        self.ports: dict[str, int] = {}

    def wait_ports(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited {self.popen.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            if self.port_file.exists():
                self.ports = json.loads(self.port_file.read_text())
                return self.ports
            time.sleep(0.2)
        raise AssertionError(
            f"{self.name}: no port file after {timeout:.0f}s:\n{self.log.read_text()[-3000:]}"
        )


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proc]]:
    tmp = tmp_path_factory.mktemp("images")
    registry = f"file://{tmp / 'registry'}"
    token = "test-admin-token-0123456789"
    # The image's gateway.yaml binds 0.0.0.0; here loopback only.
    etc = tmp / "etc" / "mlmesh"
    etc.mkdir(parents=True)
    (etc / "gateway.yaml").write_text((DOCKER / "gateway.yaml").read_text().replace("0.0.0.0", "127.0.0.1"))
    procs: dict[str, Proc] = {}
    try:
        for name, image in SERVICES:
            dockerfile = DOCKER / f"{image}.Dockerfile"
            env = {**image_env(dockerfile), **deployment_env(name, registry, token)}
            for key, value in env.items():
                if value.startswith(("/var/", "/etc/")):
                    env[key] = str(tmp / value.lstrip("/"))
                    if not key.endswith("CONFIG"):
                        Path(env[key]).mkdir(parents=True, exist_ok=True)
                elif key.endswith("_HOST"):
                    env[key] = "127.0.0.1"
                elif key.endswith("_PORT"):
                    env[key] = "0"
            compose_cmd = COMPOSE["services"][name].get("command")
            cmd = compose_cmd or image_cmd(dockerfile)
            prefix = {
                "trainer_svc": "MLMESH_WORKER_" if "worker" in cmd else "MLMESH_TRAINER_",
                "gateway.xds": "MLMESH_XDS_",
                "gateway": "MLMESH_GATEWAY_",
                "ingest_svc": "MLMESH_INGEST_",
                "paramserver_svc": "MLMESH_PS_",
                "serving_svc": "MLMESH_SERVING_",
            }[cmd[2]]
            port_file = tmp / "run" / f"{name}.json"
            port_file.parent.mkdir(exist_ok=True)
            env[f"{prefix}PORT_FILE"] = str(port_file)
            if name == "gateway":
                env["MLMESH_GATEWAY_XDS_ADDR"] = f"127.0.0.1:{procs['xds'].ports['port']}"
            blocker = tmp / "site" / image
            blocker.mkdir(parents=True, exist_ok=True)
            (blocker / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(blocked_modules(image))))
            env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO / "common"), str(REPO)])
            full_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), **env}
            assert cmd[:2] == ["python", "-m"], cmd
            log = tmp / "run" / f"{name}.log"
            with log.open("wb") as out:
                popen = subprocess.Popen(
                    [sys.executable, *cmd[1:]], env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp
                )
            # compose's healthcheck where it overrides the image's (a worker, the control plane).
            compose_health = COMPOSE["services"][name].get("healthcheck", {}).get("test", [])[1:]
            health = compose_health or image_healthcheck(dockerfile)
            procs[name] = Proc(name, popen, port_file, log, health)
            if name == "xds":  # the launcher needs the control plane's port
                procs[name].wait_ports(120)
        for proc in procs.values():
            proc.wait_ports(180)
        yield procs
    finally:
        for proc in reversed(list(procs.values())):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.popen.wait(30)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()


@pytest.mark.integration
@pytest.mark.parametrize("name", [name for name, _ in SERVICES])
def test_each_image_command_passes_its_healthcheck(suite: dict[str, Proc], name: str) -> None:
    proc = suite[name]
    # The container HEALTHCHECK (healthcheck.py HOST:PORT or http://HOST:PORT/healthz), on the bound port.
    script, target = proc.health[-2], proc.health[-1]
    port = proc.ports["port"]
    target = re.sub(r":\d+", f":{port}", target, count=1)
    script_path = str(DOCKER / "healthcheck.py") if script.endswith("healthcheck.py") else script
    deadline = time.monotonic() + 60
    while True:
        rc = subprocess.run([sys.executable, script_path, target], timeout=30).returncode
        if rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rc == 0, f"{name}: HEALTHCHECK {target} failed:\n{proc.log.read_text()[-3000:]}"


@pytest.mark.integration
def test_services_register_under_their_registry_names(suite: dict[str, Proc]) -> None:
    registry = Path(suite["ingest"].port_file).parent.parent / "registry"
    deadline = time.monotonic() + 30
    names = {"ingest", "paramserver", "trainer", "trainer-worker", "serving"}
    while time.monotonic() < deadline:
        found = {p.name for p in registry.iterdir() if any(p.glob("*.json"))} if registry.exists() else set()
        if names <= found:
            break
        time.sleep(0.5)
    assert names <= found, f"registered: {sorted(found)}"
    shard = json.loads(next((registry / "paramserver").glob("*.json")).read_text())
    assert shard["port"] == suite["paramserver-0"].ports["port"]
    assert str(shard["meta"]["shard"]) == "0"


@pytest.mark.integration
def test_the_gateway_image_routes_to_serving_found_in_the_registry(suite: dict[str, Proc]) -> None:
    # A model serving does not have: NOT_FOUND from a replica (404), not Envoy's 503 for a cluster
    # without endpoints, so the control plane found serving-0 in the registry and Envoy reached it.
    url = f"http://127.0.0.1:{suite['gateway'].ports['port']}/v1/models/no-such-model"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                status, body = resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read().decode()
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 404, body
    assert "no-such-model" in body
