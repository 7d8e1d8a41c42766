"""The `mlmesh` command line: start the local suite, ingest, train, predict, status, demo.

Entry point: `mlmesh.cli.main:app` (the `mlmesh` script, or
`python -m mlmesh.cli.main`). Importing it never loads TensorFlow.
"""
