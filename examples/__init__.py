"""Worked examples of users' own models trained by mlmesh (importable from the repo root)."""
