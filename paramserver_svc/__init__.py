"""paramserver_svc: one shard of mlmesh's sharded parameter server.

Run with `python -m paramserver_svc --shard-index I --num-shards N --checkpoint-dir D`.
Layout: `config` (settings) -> `server` (process lifecycle) -> `servicer`
(proto <-> domain) -> `core` (arrays, update rules, consistency, checkpoints;
no grpc).
"""
