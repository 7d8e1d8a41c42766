"""Checkpoint files: `<checkpoint_dir>/job-<quoted id>.<seq>.npz`, the newest few per job.

An uncompressed NumPy archive (writes at disk speed, loads without pickle)
holding every value and optimizer slot, the SYNC barrier's buffered
gradients, plus a JSON "meta" entry with the job's specs, optimizer,
consistency config, worker clocks and leases, version and the shard layout
it belongs to. Writes are atomic (hidden temp file, fsync, rename, fsync of
the directory): a reader sees a whole checkpoint or none. `seq` rises with
every write; the newest `keep` are kept, so when the newest turns out
unreadable (a truncated copy, a file of another job put in its place) the
one before it is still there to resume from (`read_newest`).

Thread-safe as far as the file system is: concurrent writers of one job must
be serialised by the caller (the shard holds the job's save lock).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from mlmesh import keys
from mlmesh.errors import FailedPrecondition

from paramserver_svc.core.consistency import Barrier, ClockState
from paramserver_svc.core.specs import (
    JobConfig,
    Mode,
    OptimizerConfig,
    VarSpec,
    describe_shape,
    local_shape,
)
from paramserver_svc.core.store import JobSnapshot, Ledger, Variable

FORMAT = 2
SUFFIX = ".npz"
_META = "__meta__"
DEFAULT_KEEP = 2


def job_stem(job_id: str) -> str:
    """Stable, file-system-safe name of a job's checkpoints (no '.'); long ids fall back to a hash."""
    name = quote(job_id, safe="-_")
    if len(name) > 180:
        name = "sha256-" + hashlib.sha256(job_id.encode()).hexdigest()
    return f"job-{name}"


def job_checkpoints(directory: Path, job_id: str) -> list[Path]:
    """The job's checkpoint files, newest first."""
    return list_checkpoints(directory).get(job_stem(job_id), [])


def list_checkpoints(directory: Path) -> dict[str, list[Path]]:
    """Checkpoint files by job stem, each list newest first."""
    out: dict[str, list[tuple[int, Path]]] = {}
    if not directory.is_dir():
        return {}
    for path in directory.glob(f"job-*{SUFFIX}"):
        stem, _, seq = path.name.removesuffix(SUFFIX).rpartition(".")
        if path.is_file() and stem and seq.isdigit():
            out.setdefault(stem, []).append((int(seq), path))
    return {stem: [p for _, p in sorted(items, reverse=True)] for stem, items in sorted(out.items())}


# `<checkpoint_dir>/job-<quoted id>.dropped`: the job was dropped (DropJob) after its final
# checkpoint; a restarting shard leaves it on disk. Holds the job id (the stem may be a hash).
DROPPED_SUFFIX = ".dropped"


def write_dropped_marker(directory: Path, job_id: str) -> None:
    """Atomically mark the job as dropped."""
    final = directory / f"{job_stem(job_id)}{DROPPED_SUFFIX}"
    tmp = directory / f".tmp-{final.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "w") as f:
            json.dump({"job_id": job_id}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)


def remove_dropped_marker(directory: Path, job_id: str) -> None:
    (directory / f"{job_stem(job_id)}{DROPPED_SUFFIX}").unlink(missing_ok=True)
    _fsync_dir(directory)


def dropped_jobs(directory: Path) -> dict[str, str]:
    """The dropped jobs' ids by job stem (an unreadable marker still counts, by its stem)."""
    out: dict[str, str] = {}
    if not directory.is_dir():
        return out
    for path in directory.glob(f"job-*{DROPPED_SUFFIX}"):
        stem = path.name.removesuffix(DROPPED_SUFFIX)
        try:
            out[stem] = str(json.loads(path.read_text())["job_id"])
        except (OSError, ValueError, KeyError, TypeError):
            out[stem] = stem
    return out


def write_checkpoint(
    directory: Path, snap: JobSnapshot, shard_index: int, num_shards: int, keep: int = DEFAULT_KEEP
) -> Path:
    """Write a new checkpoint atomically and prune all but the newest `keep`; returns its path."""
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
                "layout": var.spec.layout.value,
                "updates": var.updates,
                "slots": sorted(var.slots),
            }
        )
    b = snap.barrier  # SYNC: the gradients of the step being aggregated
    for i, total in enumerate(b.dense.values()):
        arrays[f"b{i}"] = total
    for i, parts in enumerate(b.rows.values()):
        arrays[f"r{i}.ids"] = np.concatenate([p[0] for p in parts])
        arrays[f"r{i}.grads"] = np.concatenate([p[1] for p in parts])
    c = snap.clocks
    meta = {
        "format": FORMAT,
        "job_id": snap.job_id,
        "shard_index": shard_index,
        "num_shards": num_shards,
        "optimizer": vars(snap.optimizer),
        "config": {**vars(snap.config), "mode": snap.config.mode.value},
        "version": snap.version,
        "clocks": {"clocks": c.clocks, "live": c.live, "clock": c.clock, "lost_steps": c.lost_steps},
        "barrier": {
            "dense": list(b.dense),
            "rows": list(b.rows),
            "workers": sorted(b.workers),
            "contributors": b.contributors,
        },
        "variables": var_meta,
        "ledger": {
            "applied_by_task": snap.ledger.applied_by_task,
            "lease_of_task": snap.ledger.lease_of_task,
            "settled": snap.ledger.settled,
        },
    }
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    existing = job_checkpoints(directory, snap.job_id)
    seq = int(existing[0].name.removesuffix(SUFFIX).rpartition(".")[2]) + 1 if existing else 1
    final = directory / f"{job_stem(snap.job_id)}.{seq:010d}{SUFFIX}"
    tmp = directory / f".tmp-{final.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)  # make the rename itself durable
    for old in existing[max(0, keep - 1) :]:
        old.unlink(missing_ok=True)
    return final


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class CheckpointMeta:
    path: Path
    job_id: str
    version: int
    clock: int  # SYNC: the step it was taken at (all shards take theirs at the same steps)


def describe(path: Path) -> CheckpointMeta | None:
    """A checkpoint's identity from its meta entry alone (the arrays are not read); None if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z[_META]).decode())
        return CheckpointMeta(path, meta["job_id"], int(meta["version"]), int(meta["clocks"]["clock"]))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None


def read_newest(
    paths: list[Path], job_id: str | None, shard_index: int, num_shards: int
) -> tuple[JobSnapshot, Path, list[str]]:
    """The newest readable checkpoint of `paths` (newest first) that holds `job_id`
    (None: the job its file name says).

    Returns (snapshot, its path, why each newer one was refused). FailedPrecondition,
    listing every reason, when none is usable.
    """
    refused: list[str] = []
    for path in paths:
        try:
            snap = read_checkpoint(path, shard_index, num_shards)
        except FailedPrecondition as e:
            refused.append(e.message)
            continue
        stem = path.name.removesuffix(SUFFIX).rpartition(".")[0]
        expected = job_stem(job_id) if job_id is not None else stem
        if job_stem(snap.job_id) != expected or stem != expected:
            refused.append(f"checkpoint {path} holds job {snap.job_id!r}, not the job its name says")
            continue
        return snap, path, refused
    raise FailedPrecondition("no usable checkpoint: " + "; ".join(refused or ["none found"]))


def read_checkpoint(path: Path, shard_index: int, num_shards: int) -> JobSnapshot:
    """Load and check a checkpoint against this shard's layout.

    FileNotFoundError if missing; FailedPrecondition if unreadable (truncated,
    not an archive, another format) or written by a shard with another index
    or shard count.
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
                spec = VarSpec(
                    vm["name"],
                    np.dtype(vm["dtype"]),
                    tuple(vm["shape"]),
                    bool(vm["row_sharded"]),
                    keys.RowLayout(vm["layout"]),
                )
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
            bm = meta["barrier"]
            barrier = Barrier(
                {name: np.array(z[f"b{i}"]) for i, name in enumerate(bm["dense"])},
                {name: [(z[f"r{i}.ids"], z[f"r{i}.grads"])] for i, name in enumerate(bm["rows"])},
                set(bm["workers"]),
                int(bm["contributors"]),
            )
            cm = meta["clocks"]
            lm = meta.get("ledger", {})  # absent before exactly-once jobs
            config = dict(meta["config"])
            return JobSnapshot(
                job_id=meta["job_id"],
                optimizer=OptimizerConfig(**meta["optimizer"]),
                config=JobConfig(**{**config, "mode": Mode(config["mode"])}),
                version=int(meta["version"]),
                clocks=ClockState(
                    {str(k): int(v) for k, v in cm["clocks"].items()},
                    [str(w) for w in cm["live"]],
                    int(cm["clock"]),
                    int(cm["lost_steps"]),
                ),
                variables=variables,
                barrier=barrier,
                ledger=Ledger(
                    {str(k): int(v) for k, v in lm.get("applied_by_task", {}).items()},
                    {str(k): str(v) for k, v in lm.get("lease_of_task", {}).items()},
                    {str(k): str(v) for k, v in lm.get("settled", {}).items()},
                ),
            )
    except FileNotFoundError:
        raise
    except FailedPrecondition:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise FailedPrecondition(f"checkpoint {path} is unreadable: {type(e).__name__}: {e}") from e
