"""Checkpoint files: one per job, `<checkpoint_dir>/job-<quoted id>.npz`.

An uncompressed NumPy archive (writes at disk speed, loads without pickle)
holding every value and optimizer slot, plus a JSON "meta" entry with the
job's specs, optimizer, clocks, version and the shard layout it belongs to.
Writes are atomic (hidden temp file, fsync, rename, fsync of the directory):
a reader sees the old checkpoint or the new one, never a torn file.

Thread-safe as far as the file system is: concurrent writers of one job must
be serialised by the caller (the shard holds the job's save lock).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from mlmesh.errors import FailedPrecondition

from paramserver_svc.core.specs import OptimizerConfig, VarSpec, describe_shape, local_shape
from paramserver_svc.core.store import JobSnapshot, Variable

FORMAT = 1
SUFFIX = ".npz"
_META = "__meta__"


def checkpoint_path(directory: Path, job_id: str) -> Path:
    """Stable, file-system-safe name; long ids fall back to a hash."""
    name = quote(job_id, safe="-_")
    if len(name) > 180:
        name = "sha256-" + hashlib.sha256(job_id.encode()).hexdigest()
    return directory / f"job-{name}{SUFFIX}"


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f"job-*{SUFFIX}") if p.is_file())


def write_checkpoint(directory: Path, snap: JobSnapshot, shard_index: int, num_shards: int) -> Path:
    """Write atomically; returns the final path."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    var_meta: list[dict[str, Any]] = []
    for i, var in enumerate(snap.variables):
        arrays[f"v{i}"] = var.value
        for slot, arr in var.slots.items():
            arrays[f"v{i}.{slot}"] = arr
        var_meta.append(
            {
                "name": var.spec.name,
                "dtype": var.spec.dtype.str,
                "shape": list(var.spec.shape),
                "row_sharded": var.spec.row_sharded,
                "updates": var.updates,
                "slots": sorted(var.slots),
            }
        )
    meta = {
        "format": FORMAT,
        "job_id": snap.job_id,
        "shard_index": shard_index,
        "num_shards": num_shards,
        "optimizer": vars(snap.optimizer),
        "version": snap.version,
        "clocks": snap.clocks,
        "variables": var_meta,
    }
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    final = checkpoint_path(directory, snap.job_id)
    tmp = directory / f".tmp-{final.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return final


def read_checkpoint(path: Path, shard_index: int, num_shards: int) -> JobSnapshot:
    """Load and check a checkpoint against this shard's layout.

    FileNotFoundError if missing; FailedPrecondition if unreadable or written
    by a shard with another index or shard count.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z[_META]).decode())
            if meta.get("format") != FORMAT:
                raise FailedPrecondition(
                    f"checkpoint {path} has format {meta.get('format')}; expected {FORMAT}"
                )
            if (meta["shard_index"], meta["num_shards"]) != (shard_index, num_shards):
                raise FailedPrecondition(
                    f"checkpoint {path} was written by shard {meta['shard_index']} of {meta['num_shards']}; "
                    f"this is shard {shard_index} of {num_shards}"
                )
            variables = []
            for i, vm in enumerate(meta["variables"]):
                spec = VarSpec(vm["name"], np.dtype(vm["dtype"]), tuple(vm["shape"]), bool(vm["row_sharded"]))
                value = z[f"v{i}"]
                expected = local_shape(spec, shard_index, num_shards)
                if value.dtype != spec.dtype or value.shape != expected:
                    raise FailedPrecondition(
                        f"checkpoint {path}: variable {spec.name!r} holds "
                        f"{describe_shape(value.dtype, value.shape)}, "
                        f"expected {describe_shape(spec.dtype, expected)}"
                    )
                slots = {s: z[f"v{i}.{s}"] for s in vm["slots"]}
                variables.append(Variable(spec, value, slots, int(vm["updates"])))
            return JobSnapshot(
                job_id=meta["job_id"],
                optimizer=OptimizerConfig(**meta["optimizer"]),
                version=int(meta["version"]),
                clocks={str(k): int(v) for k, v in meta["clocks"].items()},
                variables=variables,
            )
    except FileNotFoundError:
        raise
    except FailedPrecondition:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise FailedPrecondition(f"checkpoint {path} is unreadable: {type(e).__name__}: {e}") from e
