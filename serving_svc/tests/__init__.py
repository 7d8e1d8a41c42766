"""Tests of serving_svc: unit (in-process), integration and faults (real processes)."""
