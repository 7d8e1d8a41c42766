"""Framework-free core of trainer_svc: job lifecycle, placement, batching,
caching and the training loop. Nothing here imports grpc; remote services are
reached through the ports in `ports.py`."""
