"""Envoy's bootstrap when the control plane configures it: the node, the admin port and
one static cluster (the control plane's ADS address). Everything else comes over ADS.

The listeners' ports travel as node metadata (`listener_ports`), so the launcher
keeps deciding them (`--port`, `--internal-port`; the supervisor restarts a
gateway on its old port) while the control plane owns the listeners.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    backoff_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format, struct_pb2

from gateway.core.backends import Backend
from gateway.xds.resources import ads_source, load_assignment, packed, seconds

XDS_CLUSTER = "xds"
NODE_CLUSTER = "mlmesh-gateway"


def build_xds_bootstrap(
    *,
    node_id: str,
    admin_host: str,
    admin_port: int,
    xds: Backend,
    listener_ports: Mapping[str, int],
) -> dict[str, Any]:
    """The bootstrap as a JSON-ready dict (for `envoy -c`)."""
    metadata = struct_pb2.Struct()
    metadata.update({"listener_ports": dict(listener_ports)})
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                connection_keepalive=protocol_pb2.KeepaliveSettings(interval=seconds(5), timeout=seconds(5))
            )
        )
    )
    control_plane = cluster_pb2.Cluster(
        name=XDS_CLUSTER,
        type=cluster_pb2.Cluster.STATIC if xds.is_ip else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=seconds(1),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": packed(http2)
        },
        load_assignment=load_assignment(XDS_CLUSTER, [(xds.host, xds.port)]),
    )
    bootstrap = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=node_id, cluster=NODE_CLUSTER, metadata=metadata),
        admin=bootstrap_pb2.Admin(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=admin_host, port_value=admin_port)
            )
        ),
        # Bounds downstream connections (Envoy warns without a limit).
        overload_manager=overload_pb2.OverloadManager(
            resource_monitors=[
                overload_pb2.ResourceMonitor(
                    name="envoy.resource_monitors.global_downstream_max_connections",
                    typed_config=packed(
                        downstream_connections_pb2.DownstreamConnectionsConfig(
                            max_active_downstream_connections=50000
                        )
                    ),
                )
            ]
        ),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.GRPC,
                transport_api_version=config_source_pb2.V3,
                set_node_on_first_message_only=True,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER),
                        # Reconnect quickly after a control-plane restart (Envoy keeps its config meanwhile).
                        retry_policy=base_pb2.RetryPolicy(
                            retry_back_off=backoff_pb2.BackoffStrategy(
                                base_interval=seconds(0.1), max_interval=seconds(1)
                            )
                        ),
                    )
                ],
            ),
            cds_config=ads_source(),
            lds_config=ads_source(),
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=[control_plane]),
    )
    return json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)
