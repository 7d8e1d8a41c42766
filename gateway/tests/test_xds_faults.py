"""Control-plane outage: Envoy keeps serving on its last configuration while the control
plane is down (kill -9), and reconverges when it comes back, without a failed request."""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

import pytest
from mlmesh.clients import check_health

from gateway.tests.conftest import ProcessGroup, listener_of, wait_until, write_config
from gateway.tests.http_util import http
from gateway.tests.test_faults import Load

pytestmark = pytest.mark.faults


def connected(admin_port: int) -> bool:
    body = http(admin_port, "GET", "/stats?filter=^control_plane.connected_state$").body.decode()
    return body.strip() == "control_plane.connected_state: 1"


def test_control_plane_killed_envoy_keeps_serving_and_reconverges_after_restart(group: ProcessGroup) -> None:
    r0, r1, r2 = group.backend("r0"), group.backend("r1"), group.backend("r2")
    cp = group.control_plane("xds", [r0, r1])
    gw = group.static_gateway("gw", [], "--xds-addr", cp.addr)
    admin = gw.ports["admin_port"]
    assert wait_until(lambda: connected(admin), 10)
    # The control plane is an mlmesh service: health, and its counters on /metrics.
    assert check_health(cp.addr, "envoy.service.discovery.v3.AggregatedDiscoveryService") == "SERVING"
    metrics = http(cp.ports["metrics_port"], "GET", "/metrics").body.decode()
    for kind in ("LDS", "RDS", "CDS", "EDS"):
        assert f'mlmesh_xds_acks_total{{type="{kind}"}}' in metrics
    assert "mlmesh_xds_snapshots_total 1.0" in metrics
    with Load(gw.ports["port"]) as load:
        time.sleep(0.5)
        cp.popen.kill()  # SIGKILL: no goodbye on the ADS stream
        cp.popen.wait(5)
        killed_at = time.monotonic()
        assert wait_until(lambda: not connected(admin), 5)
        time.sleep(1.5)
        assert load.replicas_since(killed_at + 0.5).keys() == {"r0", "r1"}  # the last config serves
        # The supervisor's restart: same port, and meanwhile the registry gained r2.
        restarted = group.control_plane("xds-again", [r0, r1, r2], port=cp.ports["port"])
        back_at = time.monotonic()
        assert wait_until(lambda: connected(admin), 10)
        assert wait_until(lambda: "r2" in load.replicas_since(back_at), 10)
        print(f"reconnected and r2 took traffic {time.monotonic() - back_at:.2f}s after the restart")
        time.sleep(0.5)
    assert load.errors() == []
    assert len(load.results) > 200, len(load.results)
    assert "xds_stream_opened" in restarted.log()


def test_listener_port_in_use_is_nacked_and_fails_startup_naming_the_listener(group: ProcessGroup) -> None:
    r0 = group.backend("r0")
    cp = group.control_plane("xds", [r0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as e:
            group.static_gateway("gw", [], "--xds-addr", cp.addr, "--port", str(port))
    assert "exited with 1" in str(e.value)
    assert "Envoy has no listener named 'ingress'" in str(e.value)
    # Envoy refused the listeners it could not bind: a NACK, logged with Envoy's reason.
    assert wait_until(lambda: "xds_nack" in cp.log(), 5)
    assert "Address already in use" in cp.log()


def test_sighup_pushes_a_valid_config_and_keeps_the_old_one_when_the_new_is_invalid(
    group: ProcessGroup,
) -> None:
    r0 = group.backend("r0")
    path = write_config(group.workdir / "gateway.yaml", lambda d: None)
    cp = group.control_plane("xds", [r0], "--config", str(path))
    gw = group.static_gateway("gw", [], "--xds-addr", cp.addr)
    port = gw.ports["port"]
    assert http(port, "GET", "/extra").status == 404

    def extra(d: dict[str, Any]) -> None:
        listener_of(d, "ingress")["routes"].append(
            {"name": "extra", "kind": "status", "match": {"path": "/extra"}, "direct_response": "new\n"}
        )

    write_config(path, extra)
    cp.popen.send_signal(signal.SIGHUP)
    assert wait_until(lambda: http(port, "GET", "/extra").status == 200, 10)

    write_config(path, lambda d: d["clusters"][0].update(connect_timeout="soon"))
    cp.popen.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "config_reload_refused" in cp.log(), 10)
    assert "clusters[0](serving).connect_timeout: invalid duration 'soon'" in cp.log()
    assert http(port, "GET", "/extra").body == b"new\n"  # the running config stays
    assert cp.popen.poll() is None
