"""The mlmesh gateway: a launcher that runs a real Envoy in front of serving replicas.

Envoy terminates HTTP/1.1 JSON (transcoded to gRPC `ServingService`) and native
gRPC on one port, balances over the serving replicas, health-checks them,
ejects outliers and retries safe failures. This package renders Envoy's
bootstrap, supervises the Envoy process and reports its ports.
"""
