"""Settings and backend parsing: every bad value is refused with a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlmesh.settings import load_settings

from gateway.config import GatewaySettings
from gateway.core.backends import Backend, parse_backend, parse_backends

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MLMESH_GATEWAY_"):
            monkeypatch.delenv(key)


def load(tmp_path: Path, *args: str) -> GatewaySettings:
    return load_settings(GatewaySettings, ["--work-dir", str(tmp_path), *args])


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        load(tmp_path, *args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8500", Backend("127.0.0.1", 8500)),
        (" serving-0.serving-svc:8500 ", Backend("serving-0.serving-svc", 8500)),
        ("[::1]:9000", Backend("::1", 9000)),
        ("localhost:1", Backend("localhost", 1)),
    ],
)
def test_parse_backend_accepts(text: str, expected: Backend) -> None:
    assert parse_backend(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "is not host:port"),
        (":8500", "is not host:port"),
        ("host:0", "expected an integer in 1..65535"),
        ("host:65536", "expected an integer in 1..65535"),
        ("host:http", "expected an integer in 1..65535"),
        ("bad host:80", "invalid host 'bad host'"),
        ("-x:80", "invalid host '-x'"),
        ("::1:80", "write IPv6 addresses as [addr]:port"),
        ("[::zz]:80", "invalid IPv6 address"),
        ("[::1]80", "is not [ipv6]:port"),
    ],
)
def test_parse_backend_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_backend(text)


def test_parse_backends_keeps_order_and_refuses_duplicates_and_empty() -> None:
    assert parse_backends("127.0.0.1:2, 127.0.0.1:1") == [Backend("127.0.0.1", 2), Backend("127.0.0.1", 1)]
    with pytest.raises(ValueError, match="listed twice"):
        parse_backends("127.0.0.1:1,127.0.0.1:1")
    with pytest.raises(ValueError, match="at least one"):
        parse_backends(" , ")


def test_backend_is_ip_distinguishes_literals_from_names() -> None:
    assert Backend("10.0.0.1", 1).is_ip and Backend("::1", 1).is_ip
    assert not Backend("serving-svc", 1).is_ip
    assert str(Backend("::1", 5)) == "[::1]:5"


def test_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, "--backends", "127.0.0.1:1,127.0.0.1:2")
    assert s.backend_list == [Backend("127.0.0.1", 1), Backend("127.0.0.1", 2)]
    assert (s.host, s.port, s.admin_port, s.concurrency) == ("127.0.0.1", 0, 0, 1)
    assert s.base_id is None
    assert s.retry_on == "unavailable,reset,connect-failure,refused-stream"
    assert s.num_retries == 2
    assert s.effective_admin_port == 0


def test_environment_is_read_with_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMESH_GATEWAY_BACKENDS", "127.0.0.1:7")
    monkeypatch.setenv("MLMESH_GATEWAY_BASE_ID", "42")
    s = load(tmp_path)
    assert s.backend_list == [Backend("127.0.0.1", 7)]
    assert s.base_id == 42


def test_flags_are_kebab_case(tmp_path: Path) -> None:
    s = load(
        tmp_path, "--backends", "127.0.0.1:1", "--admin-port", "9901", "--base-id", "3", "--num-retries", "0"
    )
    assert (s.admin_port, s.base_id, s.num_retries) == (9901, 3, 0)


def test_missing_backends_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(tmp_path, capsys)
    assert "backends" in err and "MLMESH_GATEWAY_BACKENDS" in err


def test_bad_backend_is_refused_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(tmp_path, capsys, "--backends", "127.0.0.1:1,nope")
    assert "invalid setting backends (--backends / MLMESH_GATEWAY_BACKENDS)" in err
    assert "backend 'nope' is not host:port" in err


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--retry-on", "unavailable,sometimes"], "retry_on"),
        (["--num-retries", "11"], "num_retries"),
        (["--concurrency", "0"], "concurrency"),
        (["--admin-port", "70000"], "admin_port"),
        (["--base-id", "-1"], "base_id"),
        (["--admin-port", "9901", "--metrics-port", "9902"], "metrics_port"),
        (
            ["--health-check-interval-seconds", "0.5", "--health-check-timeout-seconds", "1"],
            "health_check_timeout",
        ),
        (["--outlier-max-ejection-percent", "101"], "outlier_max_ejection_percent"),
        (["--startup-timeout-seconds", "0"], "startup_timeout_seconds"),
        (["--unknown-flag", "1"], "unknown"),
    ],
)
def test_bad_values_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], setting: str
) -> None:
    err = refused(tmp_path, capsys, "--backends", "127.0.0.1:1", *args)
    assert setting in err


def test_xds_mode_needs_exactly_one_source_and_refuses_static_only_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load(tmp_path, "--xds-addr", "127.0.0.1:18000", "--internal-port", "9902")
    assert (s.xds_backend, s.internal_port, s.backend_list) == (Backend("127.0.0.1", 18000), 9902, [])
    err = refused(tmp_path, capsys, "--xds-addr", "127.0.0.1:18000", "--backends", "127.0.0.1:1")
    assert "set exactly one of backends" in err
    err = refused(tmp_path, capsys, "--xds-addr", "127.0.0.1:18000", "--lb-policy", "LEAST_REQUEST")
    assert "settings ['lb_policy'] shape a static Envoy" in err
    err = refused(tmp_path, capsys, "--backends", "127.0.0.1:1", "--internal-port", "1")
    assert "internal_port needs xds_addr" in err
    assert "is not host:port" in refused(tmp_path, capsys, "--xds-addr", "nope")


def test_retry_on_is_normalised(tmp_path: Path) -> None:
    s = load(tmp_path, "--backends", "127.0.0.1:1", "--retry-on", " 5xx , reset ")
    assert s.retry_on == "5xx,reset"


def test_metrics_port_becomes_admin_port(tmp_path: Path) -> None:
    s = load(tmp_path, "--backends", "127.0.0.1:1", "--metrics-port", "9902")
    assert s.effective_admin_port == 9902
    s = load(tmp_path, "--backends", "127.0.0.1:1", "--metrics-port", "9902", "--admin-port", "9902")
    assert s.effective_admin_port == 9902
