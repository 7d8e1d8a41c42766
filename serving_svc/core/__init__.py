"""Framework-free core of the model server: source → loader → manager → batcher (no grpc here)."""
