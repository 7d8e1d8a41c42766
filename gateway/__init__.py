"""The mlmesh gateway: a real Envoy in front of the services, and the control plane that configures it.

Envoy terminates HTTP/1.1 JSON (transcoded to gRPC `ServingService`) and native
gRPC on its public listener, and the admin routes (bearer token) on an internal
one; it balances over the replicas, health-checks them, ejects outliers and
retries safe failures. `gateway.xds` builds all of that from `gateway.yaml` and
the service registry and serves it over ADS; this package's launcher runs and
supervises Envoy (`--xds-addr`, or a static bootstrap with `--backends`).
"""
