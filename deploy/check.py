"""`make deploy-check`: everything in deploy/ that can be checked without a container engine.

- every kustomize overlay, and every component on top of the dev overlay, is rendered with a
  real kustomize (`kubectl kustomize`, else `kustomize build`) and each object is validated
  against the Kubernetes schemas of K8S_VERSION (kubernetes-validate, strict: unknown fields
  fail); the Kubeflow TFJob's pod templates are validated as PodTemplates; pod specs must be
  hardened (non-root, read-only root filesystem, no capabilities, no privilege escalation),
  have requests and limits and probes; shard counts must agree with replicas;
- every Dockerfile is linted with hadolint, pinned by digest, non-root, has a HEALTHCHECK and
  runs `python -m <service>`; its requirements agree with pyproject.toml's pins;
- the compose file is validated against the Compose specification's schema
  (check-jsonschema's vendored copy), and its health-based depends_on and build paths;
- the Argo WorkflowTemplate is validated against Argo's models (hera), unknown fields fail.

Usage: python deploy/check.py [--root REPO]. Exit 1 with one `FILE: reason` line per problem.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

K8S_VERSION = "1.33.0"
SHARED_DIGEST_RE = re.compile(r"^FROM\s+(\S+)", re.M)
CONTAINER_KEYS = ("containers", "initContainers")


class Problems:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.items: list[str] = []

    def add(self, path: Path | str, reason: str) -> None:
        p = Path(path)
        shown = p.relative_to(self.root) if p.is_absolute() and p.is_relative_to(self.root) else p
        self.items.append(f"{shown}: {reason}")


# --- Kubernetes ---------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise SystemExit(
        "deploy-check: neither kubectl nor kustomize is installed (make deploy-check installs one)"
    )


def render(directory: Path) -> tuple[list[dict[str, Any]], str]:
    proc = subprocess.run([*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return [], proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d], ""


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every workload kind, the TFJob's replica templates included."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        yield "spec.template", spec.get("template") or {}
    elif kind == "TFJob":
        for role, replica in (spec.get("tfReplicaSpecs") or {}).items():
            yield f"spec.tfReplicaSpecs.{role}.template", replica.get("template") or {}


def env_value(container: dict[str, Any], name: str) -> str | None:
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def check_pod(problems: Problems, where: str, name: str, template: dict[str, Any]) -> None:
    spec = template.get("spec") or {}
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.add(where, f"{name}: pod securityContext.runAsNonRoot must be true")
    if spec.get("automountServiceAccountToken") is not False:
        problems.add(where, f"{name}: automountServiceAccountToken must be false")
    init = [(c, True) for c in spec.get("initContainers") or []]
    for c, is_init in [*init, *((c, False) for c in spec.get("containers") or [])]:
        cname = f"{name} container {c.get('name')}"
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.add(where, f"{cname}: image {image!r} has no version tag or digest")
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.add(where, f"{cname}: securityContext.readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.add(where, f"{cname}: securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.add(where, f"{cname}: securityContext.capabilities.drop must contain ALL")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    problems.add(where, f"{cname}: resources.{part}.{r} is missing")
        for probe in () if is_init else ("readinessProbe", "livenessProbe"):
            if probe not in c:
                problems.add(where, f"{cname}: {probe} is missing")


def check_shards(problems: Problems, where: str, objs: list[dict[str, Any]]) -> None:
    """MLMESH_PS_NUM_SHARDS == the shard replicas == the coordinator's static shard list, if any."""
    replicas = None
    for obj in objs:
        if obj.get("kind") == "StatefulSet" and obj["metadata"]["name"] == "paramserver":
            replicas = obj["spec"].get("replicas", 1)
            container = obj["spec"]["template"]["spec"]["containers"][0]
        elif obj.get("kind") == "TFJob" and "PS" in obj["spec"].get("tfReplicaSpecs", {}):
            ps = obj["spec"]["tfReplicaSpecs"]["PS"]
            replicas, container = ps.get("replicas", 1), ps["template"]["spec"]["containers"][0]
        else:
            continue
        declared = env_value(container, "MLMESH_PS_NUM_SHARDS")
        if declared != str(replicas):
            problems.add(
                where,
                f"{obj['kind']} {obj['metadata']['name']}: MLMESH_PS_NUM_SHARDS={declared} "
                f"but replicas={replicas}",
            )
    for obj in objs:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == "mlmesh-discovery" and replicas:
            addrs = (obj.get("data") or {}).get("MLMESH_TRAINER_PS_ADDRS")
            if addrs and len(addrs.split(",")) != replicas:
                problems.add(
                    where,
                    f"MLMESH_TRAINER_PS_ADDRS lists {len(addrs.split(','))} shards "
                    f"but the paramserver has {replicas} replicas",
                )


def validate_objects(problems: Problems, where: str, objs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    if not objs:
        problems.add(where, "renders no objects")
    for obj in objs:
        name = f"{obj.get('kind')} {(obj.get('metadata') or {}).get('name')}"
        if obj.get("kind") == "TFJob":
            if obj.get("apiVersion") != "kubeflow.org/v1":
                problems.add(where, f"{name}: apiVersion must be kubeflow.org/v1")
            replicas = (obj.get("spec") or {}).get("tfReplicaSpecs") or {}
            for role, spec in replicas.items():
                if role not in ("Chief", "PS", "Worker", "Evaluator"):
                    problems.add(where, f"{name}: unknown replica type {role}")
                if spec.get("restartPolicy") not in ("Always", "OnFailure", "Never", "ExitCode"):
                    problems.add(
                        where, f"{name}: {role}.restartPolicy {spec.get('restartPolicy')!r} is not valid"
                    )
            # The replica templates are plain pod templates: the Kubernetes schema applies.
            targets = [
                (
                    f"{name} {path}",
                    {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": t},
                )
                for path, t in pod_specs(obj)
            ]
        else:
            targets = [(name, obj)]
        for label, target in targets:
            try:
                kubernetes_validate.validate(target, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.add(where, f"{label}: {path}: {e.message} (Kubernetes {K8S_VERSION} schema)")
            except kubernetes_validate.SchemaNotFoundError:
                problems.add(where, f"{label}: no Kubernetes {K8S_VERSION} schema for this kind")
        for path, template in pod_specs(obj):
            check_pod(problems, where, f"{name} {path}", template)
    check_shards(problems, where, objs)


def check_kubernetes(problems: Problems, k8s: Path) -> None:
    overlays = sorted(p for p in (k8s / "overlays").iterdir() if (p / "kustomization.yaml").exists())
    if not overlays:
        problems.add(k8s / "overlays", "no overlays")
    for overlay in overlays:
        objs, err = render(overlay)
        if err:
            problems.add(overlay / "kustomization.yaml", f"kustomize failed: {err}")
        else:
            validate_objects(problems, str(overlay.relative_to(problems.root)), objs)
    # Each component as a user adds it: the dev overlay's kustomization plus `components:`.
    dev = k8s / "overlays" / "dev"
    dev_kustomization = yaml.safe_load((dev / "kustomization.yaml").read_text())
    for component in sorted(p for p in (k8s / "components").iterdir() if (p / "kustomization.yaml").exists()):
        with tempfile.TemporaryDirectory() as tmp:
            # kustomize refuses absolute paths: refer to bases and the component relatively.
            kustomization = dict(dev_kustomization)
            # Files are copied (kustomize loads files only from below the root); bases are referred to.
            resources = []
            for r in dev_kustomization["resources"]:
                if (dev / r).is_file():
                    shutil.copy(dev / r, Path(tmp) / Path(r).name)
                    resources.append(Path(r).name)
                else:
                    resources.append(os.path.relpath(dev / r, tmp))
            kustomization["resources"] = resources
            kustomization["components"] = [os.path.relpath(component, tmp)]
            (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            objs, err = render(Path(tmp))
        where = f"{component.relative_to(problems.root)} (in overlays/dev)"
        if err:
            problems.add(component / "kustomization.yaml", f"kustomize failed: {err}")
        else:
            validate_objects(problems, where, objs)


# --- images -------------------------------------------------------------------------------


def requirement_pins(root: Path) -> dict[str, str]:
    """pyproject's dependencies and extras as {normalized name: specifier}."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return dict(parse_requirement(r) for r in reqs)


def parse_requirement(line: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*([^;#]*)", line)
    if not m:
        raise ValueError(line)
    return m.group(1).lower().replace("_", "-"), m.group(3).strip()


def check_images(problems: Problems, docker: Path) -> None:
    dockerfiles = sorted(docker.glob("*.Dockerfile"))
    if not dockerfiles:
        problems.add(docker, "no Dockerfiles")
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    pins = requirement_pins(problems.root)
    shared_ignore = (docker / ".dockerignore").resolve()
    bases: set[str] = set()
    checked: set[Path] = set()
    for f in dockerfiles:
        proc = subprocess.run(
            [hadolint, "--no-color", "--config", str(docker / ".hadolint.yaml"), str(f)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in (proc.stdout + proc.stderr).strip().splitlines():
            problems.add(f, f"hadolint: {line.split(' ', 1)[-1]}")
        if proc.returncode and not (proc.stdout + proc.stderr).strip():
            problems.add(f, f"hadolint exited {proc.returncode}")
        text = f.read_text()
        froms = [m for m in SHARED_DIGEST_RE.findall(text)]
        for image in froms:
            if "@sha256:" not in image:
                problems.add(f, f"base image {image} is not pinned by digest")
            bases.add(image)
        final = text[text.rfind("\nFROM ") :]
        users = re.findall(r"^USER\s+(\S+)", final, re.M)
        if not users or users[-1].split(":")[0] in ("0", "root"):
            problems.add(f, "the final stage must switch to a non-root USER")
        if "HEALTHCHECK" not in final:
            problems.add(f, "the final stage has no HEALTHCHECK")
        cmd = re.search(r'^CMD\s+\["python", "-m", "([a-z_.]+)"', final, re.M)
        if not cmd:
            problems.add(f, 'CMD must be ["python", "-m", "<service>", ...] (the local suite\'s command)')
        ignore = f.with_name(f.name + ".dockerignore")
        if not ignore.exists() or ignore.resolve() != shared_ignore:
            problems.add(f, f"{ignore.name} must be a link to the shared .dockerignore")
        req = re.search(r"requirements/([\w-]+)\.txt", text)
        if req:
            check_requirements(problems, docker / "requirements" / f"{req.group(1)}.txt", pins, checked)
        else:
            problems.add(f, "installs no requirements/<image>.txt")
    if len({b.split("@")[-1] for b in bases}) > 1:
        problems.add(docker, f"Dockerfiles disagree on the base image: {sorted(bases)}")


def check_requirements(problems: Problems, path: Path, pins: dict[str, str], checked: set[Path]) -> None:
    if path in checked:
        return
    checked.add(path)
    if not path.exists():
        problems.add(path, "does not exist")
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            check_requirements(problems, path.parent / line[3:].strip(), pins, checked)
            continue
        name, spec = parse_requirement(line)
        if name not in pins:
            problems.add(path, f"{name} is not a dependency in pyproject.toml")
        elif pins[name] != spec:
            problems.add(path, f"{name}{spec} disagrees with pyproject.toml's {name}{pins[name]}")


def check_gateway_config(problems: Problems, docker: Path) -> None:
    """The image's gateway.yaml is gateway/gateway.yaml with listeners on 0.0.0.0, nothing else."""
    ours, theirs = docker / "gateway.yaml", problems.root / "gateway" / "gateway.yaml"
    if not theirs.exists():
        problems.add(theirs, "missing (the xDS gateway configuration the image's copy follows)")
        return
    mine, upstream = yaml.safe_load(ours.read_text()), yaml.safe_load(theirs.read_text())
    for listener in upstream.get("listeners", []):
        listener["address"] = "0.0.0.0"
    if mine != upstream:
        problems.add(ours, "differs from gateway/gateway.yaml in more than the listeners' bind addresses")


# --- compose and workflow -----------------------------------------------------------------


def check_compose(problems: Problems, compose: Path, docker: Path) -> None:
    checker = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(compose)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        detail = " ".join(line.strip() for line in proc.stdout.splitlines()[1:] if line.strip())
        problems.add(compose, f"not a valid Compose file: {detail or proc.stderr.strip()}")
        return
    doc = yaml.safe_load(compose.read_text())
    services: dict[str, Any] = doc.get("services") or {}
    healthy_images = set()
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            dockerfile = compose.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                problems.add(compose, f"service {name}: build.dockerfile {dockerfile} does not exist")
            elif "HEALTHCHECK" in dockerfile.read_text():
                healthy_images.add(svc.get("image"))
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problems.add(compose, f"service {name}: depends_on unknown service {dep}")
                continue
            target = services[dep]
            if cond.get("condition") == "service_healthy" and not (
                "healthcheck" in target or target.get("image") in healthy_images
            ):
                problems.add(
                    compose, f"service {name}: waits for {dep} to be healthy, which has no healthcheck"
                )
    shards = [s for s in services if re.fullmatch(r"paramserver-\d+", s)]
    for s in shards:
        declared = (services[s].get("environment") or {}).get("MLMESH_PS_NUM_SHARDS")
        if declared != str(len(shards)):
            problems.add(
                compose, f"service {s}: MLMESH_PS_NUM_SHARDS={declared} but there are {len(shards)} shards"
            )


def unknown_keys(given: Any, known: Any, path: str = "") -> Iterator[str]:
    """Keys present in the input but dropped by the model (pydantic ignores unknown fields)."""
    if isinstance(given, dict) and isinstance(known, dict):
        for k, v in given.items():
            if k not in known:
                yield f"{path}.{k}".lstrip(".")
            else:
                yield from unknown_keys(v, known[k], f"{path}.{k}")
    elif isinstance(given, list) and isinstance(known, list):
        for i, (g, k) in enumerate(zip(given, known, strict=False)):
            yield from unknown_keys(g, k, f"{path}[{i}]")


def check_workflow(problems: Problems, path: Path) -> None:
    from hera.workflows.models import WorkflowTemplate
    from pydantic import ValidationError

    doc = yaml.safe_load(path.read_text())
    try:
        model = WorkflowTemplate.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        problems.add(path, f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (Argo's WorkflowTemplate)")
        return
    for key in unknown_keys(doc, model.model_dump(by_alias=True, exclude_none=True, mode="json")):
        problems.add(path, f"{key}: unknown field (Argo's WorkflowTemplate)")
    spec = doc.get("spec") or {}
    templates = {t["name"]: t for t in spec.get("templates") or []}
    if spec.get("entrypoint") not in templates:
        problems.add(path, f"entrypoint {spec.get('entrypoint')!r} is not a template")
    for t in templates.values():
        for group in t.get("steps") or []:
            for step in group:
                if step.get("template") not in templates:
                    problems.add(
                        path, f"step {step.get('name')}: template {step.get('template')!r} is not defined"
                    )
    params = {p["name"] for p in (spec.get("arguments") or {}).get("parameters") or []}
    for ref in set(re.findall(r"\{\{workflow\.parameters\.([\w-]+)\}\}", path.read_text())):
        if ref not in params:
            problems.add(path, f"workflow parameter {ref!r} is used but not declared")
    if "memoize" not in templates.get("ingest", {}):
        problems.add(path, "the ingest step must be memoized")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    deploy = root / "deploy"
    problems = Problems(root)
    check_kubernetes(problems, deploy / "k8s")
    check_images(problems, deploy / "docker")
    check_gateway_config(problems, deploy / "docker")
    check_compose(problems, deploy / "compose" / "compose.yaml", deploy / "docker")
    for wf in sorted((deploy / "workflows").glob("*.yaml")):
        check_workflow(problems, wf)
    for line in problems.items:
        print(line, file=sys.stderr)
    if problems.items:
        print(f"deploy-check: {len(problems.items)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"deploy-check: ok (Kubernetes {K8S_VERSION} schemas, hadolint, compose-spec, Argo WorkflowTemplate)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
