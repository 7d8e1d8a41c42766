"""mlmesh: the shared library of the mlmesh services, and the `mlmesh` CLI.

Generated stubs live in the `mlmesh.<domain>.v1` subpackages. Nothing here
imports TensorFlow or reads the environment at import time.
"""

__version__ = "0.1.0"
