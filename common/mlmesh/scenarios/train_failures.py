"""The train-failures scenario (`mlmesh scenario train-failures`), without the plumbing.

The data is SYNTHETIC (`mlmesh.data.train_failures`): a simulated fleet, streamed into a raw
dataset one partition per chunk of `chunk_minutes` simulated minutes, windowed by a transform
job (`mlmesh.transforms.windows`) into a features dataset, on which a continuous job trains
`mlmesh.models.failure_mlp` and exports a version per epoch. Each version served is scored on
a held-out span of the same fleet, later than anything the stream reaches (`held_out`).

Rate: the default fleet is `DEFAULT_NUM_COMPONENTS` (320) components, 1 MB per simulated
hour - the book's 1 GB/hour scaled down 1000x - and simulated time runs `speedup` (default
600) times faster than the wall clock: an hour of the fleet every 6 s, 600 MB per wall hour.
A 5-minute run streams up to 50 simulated hours: the learning curve
(`examples/train_failures/learning_curve.py`) gains most up to ~16 hours, so the served
versions keep improving for the first minutes and then level off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from mlmesh.data import train_failures as fleet
from mlmesh.scenarios.metrics import BinaryMetrics
from mlmesh.transforms import windows

DEFAULT_SPEEDUP = 600.0
MAX_SPEEDUP = 36_000.0  # 10 simulated hours a wall second: 10 chunks/s at the default chunk
DEFAULT_CHUNK_MINUTES = 60
# The held-out span starts at least this late (and always after the stream's end + a label horizon).
MIN_HOLDOUT_FROM_HOUR = 48
DEFAULT_HOLDOUT_HOURS = 6
DEFAULT_HOLDOUT_STRIDE = 3
MAX_MINUTES = 24 * 60.0

MODEL = "mlmesh.models.failure_mlp:build"
TRANSFORM = "mlmesh.transforms.windows:windows"


@dataclass(frozen=True)
class ScenarioConfig:
    """What one run does. `check()` names the offending option and what it expects."""

    minutes: float = 5.0
    speedup: float = DEFAULT_SPEEDUP  # simulated seconds per wall second
    components: int = fleet.DEFAULT_NUM_COMPONENTS
    seed: int = 0
    chunk_minutes: int = DEFAULT_CHUNK_MINUTES
    window: int = windows.DEFAULT_WINDOW
    holdout_from_hour: int | None = None  # None: the first whole hour safely after the stream
    holdout_hours: int = DEFAULT_HOLDOUT_HOURS
    holdout_stride: int = DEFAULT_HOLDOUT_STRIDE
    threshold: float = 0.5
    batch_size: int = 256
    learning_rate: float = 2e-3
    name: str = "train-failures"

    def check(self) -> ScenarioConfig:
        """Self, with the held-out start resolved; ValueError naming the option otherwise."""
        if not (math.isfinite(self.minutes) and 0 < self.minutes <= MAX_MINUTES):
            raise ValueError(
                f"--minutes is {self.minutes}; expected a number of wall minutes in (0, {MAX_MINUTES:g}]"
            )
        if not (math.isfinite(self.speedup) and 1 <= self.speedup <= MAX_SPEEDUP):
            raise ValueError(
                f"--speedup is {self.speedup}; expected simulated seconds per wall second in "
                f"[1, {MAX_SPEEDUP:g}] (default {DEFAULT_SPEEDUP:g}: an hour of the fleet every 6 s)"
            )
        if not 1 <= self.components <= 100_000:
            raise ValueError(f"--components is {self.components}; expected 1..100000")
        if not 2 <= self.window <= 1440:
            raise ValueError(f"--window is {self.window}; expected 2..1440 readings")
        if not self.window < self.chunk_minutes <= 1440:
            raise ValueError(
                f"--chunk-minutes is {self.chunk_minutes}; expected more than --window ({self.window}) "
                "and at most 1440: windows never span partitions, so a chunk must hold whole windows"
            )
        if not 1 <= self.holdout_hours <= 168:
            raise ValueError(f"--holdout-hours is {self.holdout_hours}; expected 1..168")
        if not 1 <= self.holdout_stride <= 60:
            raise ValueError(f"--holdout-stride is {self.holdout_stride}; expected 1..60")
        if not 0 < self.threshold < 1:
            raise ValueError(f"--threshold is {self.threshold}; expected a probability in (0, 1)")
        safe = self.earliest_holdout_hour()
        start = self.holdout_from_hour
        if start is None:
            start = max(MIN_HOLDOUT_FROM_HOUR, safe)
        elif start < safe:
            raise ValueError(
                f"--holdout-from-hour is {start}, but the stream may reach simulated hour "
                f"{self.stream_hours():.1f} (and its labels look an hour further): the held-out span "
                f"must start at hour {safe} or later"
            )
        return replace(self, holdout_from_hour=start)

    @property
    def simulated_minutes_per_second(self) -> float:
        return self.speedup / 60.0

    def stream_hours(self) -> float:
        """The most simulated hours the stream can emit in `minutes` wall minutes."""
        return self.minutes / 60.0 * self.speedup

    def earliest_holdout_hour(self) -> int:
        """First whole hour no training reading, nor the failures its label looked at, reaches."""
        return math.ceil(self.stream_hours()) + fleet.HORIZON_MINUTES // 60 + 1

    def bytes_per_wall_hour(self) -> float:
        return fleet.bytes_per_simulated_hour(self.components) * self.speedup

    @property
    def raw_dataset(self) -> str:
        return f"{self.name}-raw"

    @property
    def features_dataset(self) -> str:
        return f"{self.name}-features"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["simulated_minutes_per_second"] = round(self.simulated_minutes_per_second, 6)
        out["stream_hours_max"] = round(self.stream_hours(), 3)
        out["bytes_per_simulated_hour"] = fleet.bytes_per_simulated_hour(self.components)
        out["bytes_per_wall_hour"] = round(self.bytes_per_wall_hour())
        return out


def windows_per_chunk(cfg: ScenarioConfig) -> int:
    """Feature records one raw chunk becomes (every component, a window ending at each reading
    from the window-th on: windows never span partitions)."""
    return cfg.components * (cfg.chunk_minutes - cfg.window + 1)


def simulated_hours(records: int, cfg: ScenarioConfig) -> float:
    """Simulated hours of the fleet that `records` feature records were windowed from."""
    return records / windows_per_chunk(cfg) * cfg.chunk_minutes / 60.0


@dataclass(frozen=True)
class HeldOut:
    """Window features of a span of the fleet no version is trained on."""

    features: np.ndarray  # float32 [n, F]
    labels: np.ndarray  # int64 [n]
    from_hour: int
    hours: int

    @property
    def positives(self) -> int:
        return int(self.labels.sum())


def held_out(cfg: ScenarioConfig) -> HeldOut:
    """Simulated hours [holdout_from_hour, +holdout_hours) of the scenario's fleet (same
    components and seed as the stream), cut into the stream's chunks and windowed as the
    transform job windows them; every `holdout_stride`-th window of each component."""
    cfg = cfg.check()
    assert cfg.holdout_from_hour is not None
    sim = fleet.FleetSimulator(cfg.components, seed=cfg.seed)
    skip = cfg.holdout_from_hour * 60
    while sim.minute < skip:  # in pieces: memory stays one chunk's worth
        sim.next_chunk(min(cfg.chunk_minutes, skip - sim.minute))
    parts = []
    for _ in range(0, cfg.holdout_hours * 60, cfg.chunk_minutes):
        chunk = sim.next_chunk(cfg.chunk_minutes)
        parts.append(windows.window_features(chunk, window=cfg.window, stride=cfg.holdout_stride))
    return HeldOut(
        features=np.concatenate([p["features"] for p in parts]),
        labels=np.concatenate([p["label"] for p in parts]),
        from_hour=cfg.holdout_from_hour,
        hours=cfg.holdout_hours,
    )


@dataclass
class VersionResult:
    """One served version and how it scored on the held-out span."""

    version: int
    epochs: int  # epochs completed when the version was snapshotted
    partitions: int  # feature partitions those epochs covered
    records: int  # ... and their records: the data the version was trained on
    simulated_hours: float
    examples_trained: int  # examples stepped through so far (every epoch; repeats count)
    exported_after_s: float  # since the run started
    served_after_s: float
    metrics: BinaryMetrics | None = None
    eval_seconds: float = 0.0
    skipped: str = ""  # why it was not evaluated

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "metrics"}
        if self.metrics is not None:
            out.update(self.metrics.to_json())
        for key in ("simulated_hours", "exported_after_s", "served_after_s", "eval_seconds"):
            out[key] = round(out[key], 3)
        return out


def improvement(results: list[VersionResult]) -> dict[str, Any]:
    """First and last evaluated version and whether the last is better: a higher ROC AUC
    (threshold-free; precision and recall at 0.5 trade against each other)."""
    scored = [r for r in results if r.metrics is not None]
    if len(scored) < 2:
        return {"versions_evaluated": len(scored), "improved": None}
    first, last = scored[0], scored[-1]
    assert first.metrics is not None and last.metrics is not None
    return {
        "versions_evaluated": len(scored),
        "first_version": first.version,
        "last_version": last.version,
        "auc_gain": round(last.metrics.auc - first.metrics.auc, 4),
        "recall_gain": round(last.metrics.recall - first.metrics.recall, 4),
        "f1_gain": round(last.metrics.f1 - first.metrics.f1, 4),
        "improved": last.metrics.auc > first.metrics.auc,
    }


# What `serving_verdict` answers.
READY, WAITING, SUPERSEDED, FAILED = "ready", "waiting", "superseded", "failed"
_GONE = frozenset({"UNLOADING", "END"})


def serving_verdict(states: dict[str, dict[int, str] | str], version: int) -> str:
    """Whether `version` can be evaluated through the gateway now, given each replica's
    versions ({version: state name}, or the text of a call that failed).

    READY: every replica has it AVAILABLE (the gateway may route to any). FAILED: a replica
    failed to load it. SUPERSEDED: it will never be AVAILABLE everywhere again - a replica
    unloaded it, or has a newer version AVAILABLE without ever loading this one (replicas
    aspire to the newest version only). WAITING otherwise (loading, or a replica not
    answering right now).
    """
    if not states:
        return WAITING
    verdicts = []
    for versions in states.values():
        if isinstance(versions, str):
            verdicts.append(WAITING)
            continue
        state = versions.get(version, "NOT LOADED")
        if state == "FAILED":
            return FAILED
        newer = any(v > version and s == "AVAILABLE" for v, s in versions.items())
        if state in _GONE or (state == "NOT LOADED" and newer):
            return SUPERSEDED
        verdicts.append(READY if state == "AVAILABLE" else WAITING)
    return READY if all(v == READY for v in verdicts) else WAITING
