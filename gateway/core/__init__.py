"""Framework-free parts of the gateway: backend parsing, the Envoy bootstrap
builders and the admin-API client. Nothing here imports grpc."""
