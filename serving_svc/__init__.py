"""serving_svc: model servers that load SavedModels from a repository and answer Predict."""
