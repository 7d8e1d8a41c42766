"""The parameter-server shard without transport: NumPy arrays, update rules,
consistency policy, checkpoints. Nothing here imports grpc; errors are the
domain errors of `mlmesh.errors`, mapped to status codes by the servicer.
"""
