"""`python -m gateway.xds`: the control plane as an mlmesh service (health, reflection, metrics).

The config is loaded and validated and the registry opened before anything
binds: a bad file or URL exits 2 naming the problem, and Envoy never sees it.
SIGHUP reloads the config file: a valid one is pushed, an invalid one is
logged (file, field, reason) and the running config stays.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc
from mlmesh.descriptors import serving_descriptor_set
from mlmesh.discovery import RegistryError, open_registry
from mlmesh.logging import get_logger
from mlmesh.server import run_service

from gateway.xds.ads import AggregatedDiscoveryServicer
from gateway.xds.config import ConfigError, GatewayConfig, XdsSettings, load_config
from gateway.xds.control import ControlPlane
from gateway.xds.resources import check_json_services

ADS_SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name
log = get_logger("gateway.xds")


def make_control_plane(settings: XdsSettings) -> ControlPlane:
    """The control plane the settings describe; SystemExit(2) with the reason if they cannot work."""
    descriptor_set = serving_descriptor_set()
    try:
        config = load_checked(settings.config, descriptor_set)
        registry = open_registry(settings.registry)
    except (ConfigError, RegistryError) as e:
        print(f"gateway.xds: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return ControlPlane(config, registry, descriptor_set=descriptor_set, admin_token=token)


def load_checked(path: Path, descriptor_set: bytes) -> GatewayConfig:
    """The config at `path`, also checked against what Envoy will be given (ConfigError if not)."""
    config = load_config(path)
    try:
        check_json_services(config, descriptor_set)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return config


async def serve(settings: XdsSettings) -> None:
    control = make_control_plane(settings)

    def add(server: grpc.aio.Server) -> list[str]:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AggregatedDiscoveryServicer(control.cache), server
        )
        return [ADS_SERVICE]

    def reload() -> None:
        try:
            config = load_checked(settings.config, serving_descriptor_set())
        except ConfigError as e:
            log.error("config_reload_refused", error=str(e))
            return
        log.info("config_reloaded", path=str(settings.config))
        control.set_config(config)

    async def start() -> None:
        await control.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    await run_service(settings, name="xds", add_servicers=add, on_start=start, on_stop=control.close)
