"""The gateway's xDS control plane: Envoy gets its whole configuration from here.

`config` (the declarative YAML, validated), `resources` (Envoy messages built from
it), `snapshot` (versioned sets of them), `ads` (the aggregated discovery stream,
state of the world), `control` (registry watches -> snapshots), `server` (the process).
"""
