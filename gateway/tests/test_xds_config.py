"""The gateway config: the shipped file loads, and every bad input is refused at load naming
the file, the field path and the reason (so it never reaches Envoy)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlmesh.cli.suite import child_env
from mlmesh.descriptors import serving_descriptor_set
from mlmesh.settings import load_settings

from gateway.tests.conftest import REPO, listener_of, write_config
from gateway.xds.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    XdsSettings,
    load_config,
    parse_duration,
)
from gateway.xds.server import load_checked

pytestmark = pytest.mark.unit


def refusal(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> str:
    path = write_config(tmp_path / "gateway.yaml", edit)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: "), message
    return message


def route(d: dict[str, Any], listener: str, name: str) -> dict[str, Any]:
    return next(r for r in listener_of(d, listener)["routes"] if r["name"] == name)


def test_shipped_config_has_todays_public_routes_and_admin_routes_only_inside() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    ingress, internal = config.listeners
    assert (ingress.name, ingress.kind, internal.name, internal.kind) == (
        "ingress",
        "public",
        "internal",
        "internal",
    )
    assert internal.address == "127.0.0.1"
    assert {r.kind for r in ingress.routes} == {"prediction", "status"}
    assert {r.kind for r in internal.routes} == {"admin"}
    services = {r.match.grpc_service for r in ingress.routes}
    assert {"mlmesh.serving.v1.ServingService", "tensorflow.serving.PredictionService"} <= services
    assert "tensorflow.serving.ModelService" in services
    assert {r.match.grpc_service for r in internal.routes} == {
        "mlmesh.ingest.v1.IngestService",
        "mlmesh.trainer.v1.TrainerService",
        "mlmesh.serving.v1.ServingAdminService",
        "tensorflow.serving.ModelService",  # HandleReloadConfigRequest only: it rewrites the model config
    }
    tfs_status = next(r for r in ingress.routes if r.name == "tfs-status")
    assert list(tfs_status.match.methods) == ["GetModelStatus"]
    assert config.keyed_clusters() == {"serving"}
    assert config.cluster("serving").lb_policy == "LEAST_REQUEST"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), (3, 3.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_unknown_field_is_refused_with_its_path(tmp_path: Path) -> None:
    message = refusal(tmp_path, lambda d: route(d, "ingress", "serving-predict").update(colour="red"))
    assert "listeners[0](ingress).routes[2](serving-predict).colour: unknown field 'colour'" in message


def test_invalid_duration_is_refused_with_its_path(tmp_path: Path) -> None:
    message = refusal(tmp_path, lambda d: route(d, "ingress", "serving-status").update(timeout="5x"))
    assert "listeners[0](ingress).routes[1](serving-status).timeout: invalid duration '5x'" in message


def test_duplicate_route_name_is_refused(tmp_path: Path) -> None:
    def dup(d: dict[str, Any]) -> None:
        routes = listener_of(d, "ingress")["routes"]
        routes.append({**routes[-1], "match": {"grpc_service": "pkg.v1.Other"}})

    assert "duplicate route names ['tfs-status']" in refusal(tmp_path, dup)


def test_two_routes_with_the_same_match_are_refused(tmp_path: Path) -> None:
    def dup(d: dict[str, Any]) -> None:
        routes = listener_of(d, "ingress")["routes"]
        routes.append({**routes[-1], "name": "again"})

    message = refusal(tmp_path, dup)
    path = "/tensorflow.serving.ModelService/GetModelStatus"
    assert f"listeners[0](ingress): routes 'tfs-status' and 'again' both match path '{path}'" in message


def test_admin_route_on_the_public_listener_is_refused(tmp_path: Path) -> None:
    def move(d: dict[str, Any]) -> None:
        listener_of(d, "ingress")["routes"].append(route(d, "internal", "serving-admin"))
        listener_of(d, "internal")["routes"].remove(route(d, "internal", "serving-admin"))

    assert "route 'serving-admin' is an admin route on public listener 'ingress'" in refusal(tmp_path, move)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            lambda d: route(d, "ingress", "tfs-predict").update(cluster="nowhere"),
            "undefined cluster 'nowhere'",
        ),
        (lambda d: route(d, "ingress", "healthz").update(cluster="serving"), "exactly one of cluster"),
        (lambda d: route(d, "ingress", "tfs-status").update(match={"path": "x"}), "must start with '/'"),
        (
            lambda d: route(d, "ingress", "tfs-status").update(retry_on=["sometimes"]),
            "unknown retry conditions",
        ),
        (lambda d: listener_of(d, "internal").update(address="localhost"), "not an IP literal"),
        (lambda d: d["clusters"][0]["health_check"].update(timeout="2s"), "exceeds its interval"),
        (lambda d: d["clusters"].append(dict(d["clusters"][0])), "duplicate cluster names ['serving']"),
        (lambda d: d["clusters"][0].update(lb_policy="FASTEST"), "lb_policy"),
        (
            lambda d: listener_of(d, "ingress")["limits"].update(rate_limit={"requests": 5, "per": "10ms"}),
            "below Envoy's minimum of 50ms",
        ),
        (lambda d: d.update(admin_token="secret"), "unknown field 'admin_token'"),
    ],
    ids=[
        "undefined-cluster",
        "two-targets",
        "relative-path",
        "retry-on",
        "address",
        "hc-timeout",
        "duplicate-cluster",
        "lb-policy",
        "rate-interval",
        "token-in-file",
    ],
)
def test_bad_values_are_refused(tmp_path: Path, edit: Callable[[dict[str, Any]], None], reason: str) -> None:
    assert reason in refusal(tmp_path, edit)


def test_unreadable_and_non_yaml_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("listeners: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping, got list"):
        load_config(tmp_path / "list.yaml")


def test_admin_token_comes_from_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMESH_XDS_ADMIN_TOKEN", "a-long-enough-token-123")
    s = load_settings(XdsSettings, ["--registry", "static:serving=127.0.0.1:1"])
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "a-long-enough-token-123"
    assert "a-long-enough" not in repr(s)
    monkeypatch.setenv("MLMESH_XDS_ADMIN_TOKEN", "short'quote")
    with pytest.raises(SystemExit):
        load_settings(XdsSettings, ["--registry", "static:serving=127.0.0.1:1"])


def test_json_services_must_be_in_the_descriptor_set(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "g.yaml", lambda d: listener_of(d, "ingress").update(json_services=["pkg.v1.Nope"])
    )
    with pytest.raises(ConfigError) as e:
        load_checked(path, serving_descriptor_set())
    assert f"{path}: listeners[0](ingress).json_services: ['pkg.v1.Nope'] not in the descriptor set" in str(
        e.value
    )
    assert load_checked(DEFAULT_CONFIG_PATH, serving_descriptor_set()).listeners[0].json_services


def test_control_plane_with_a_bad_config_exits_2_before_serving(tmp_path: Path) -> None:
    path = write_config(tmp_path / "g.yaml", lambda d: d["clusters"][0].update(connect_timeout="soon"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.xds",
            "--registry",
            "static:serving=127.0.0.1:1",
            "--config",
            str(path),
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert f"{path}: clusters[0](serving).connect_timeout: invalid duration 'soon'" in out.stderr
