"""Offline check: does the failure predictor get better with more data?

    python -m examples.train_failures.learning_curve [--hours 1,2,4,8,16] [--epochs 10] [--json PATH]

Trains `mlmesh.models.failure_mlp` with plain Keras (no mlmesh services) on the first H
simulated hours of the default fleet (`mlmesh.data.train_failures`, 320 components, seed 0),
windowed by `mlmesh.transforms.windows` one partition per `--partition-minutes` as the
transform job would, and reports precision, recall and AUC on a later, held-out span of the
same fleet (hours `--test-from` .. +`--test-hours`), never seen in training. Same epochs for
every H, so a larger H also means more steps: what continuous training over growing data does.

Measured on 2 cores (defaults; precision / recall / AUC on hours 16-22, seeds 0, 1, 2):

    hours  seed 0               seed 1               seed 2
        1  0.49 / 0.23 / 0.78   0.38 / 0.41 / 0.81   0.66 / 0.15 / 0.70
        2  0.57 / 0.26 / 0.79   0.61 / 0.44 / 0.86   0.48 / 0.75 / 0.95
        4  0.64 / 0.61 / 0.92   0.75 / 0.43 / 0.87   0.62 / 0.64 / 0.97
        8  0.69 / 0.63 / 0.92   0.71 / 0.51 / 0.92   0.66 / 0.71 / 0.98
       16  0.59 / 0.78 / 0.96   0.67 / 0.78 / 0.96   0.73 / 0.79 / 0.99

AUC and recall rise with data; precision at the 0.5 threshold rises then wobbles by
+-0.1 (the threshold trades it against recall). Each run takes ~40 s.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from mlmesh.data.train_failures import DEFAULT_NUM_COMPONENTS, FleetSimulator
from mlmesh.transforms.windows import DEFAULT_WINDOW, window_features


def windowed(sim: FleetSimulator, minutes: int, partition_minutes: int, window: int) -> dict[str, np.ndarray]:
    parts = []
    for _ in range(0, minutes, partition_minutes):
        parts.append(window_features(sim.next_chunk(partition_minutes), window=window))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", default="1,2,4,8,16", help="training spans to compare, in simulated hours")
    ap.add_argument("--test-from", type=int, default=16, help="first simulated hour of the held-out span")
    ap.add_argument("--test-hours", type=int, default=6)
    ap.add_argument("--partition-minutes", type=int, default=60)
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--components", type=int, default=DEFAULT_NUM_COMPONENTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-args", default="", help="k=v,k=v passed to failure_mlp.build")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    hours = [int(h) for h in a.hours.split(",")]
    if max(hours) > a.test_from:
        ap.error(f"--test-from {a.test_from} must not be before the end of the largest span {max(hours)}")

    sim = FleetSimulator(a.components, seed=a.seed)
    train = windowed(sim, max(hours) * 60, a.partition_minutes, a.window)
    if a.test_from > max(hours):
        sim.next_chunk((a.test_from - max(hours)) * 60)  # a gap, seen by nobody
    test = windowed(sim, a.test_hours * 60, a.partition_minutes, a.window)
    failures = sim.failures()["t"]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from mlmesh.models import failure_mlp

    model_args = dict(kv.split("=", 1) for kv in a.model_args.split(",") if kv)
    print(
        f"fleet {a.components} components, window {a.window}, partitions of {a.partition_minutes} min; "
        f"test: hours {a.test_from}..{a.test_from + a.test_hours}, {len(test['label'])} windows, "
        f"{test['label'].mean():.3f} positive"
    )
    header = ("hours", "windows", "pos", "failures", "precision", "recall", "auc", "s")
    widths = (5, 8, 6, 8, 9, 6, 5, 5)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    rows = []
    for h in hours:
        keep = train["t"] < h * 60
        x, y = train["features"][keep], train["label"][keep]
        keras.utils.set_random_seed(a.seed)
        spec = failure_mlp.build(**model_args)
        spec.model.compile(
            optimizer=keras.optimizers.Adam(1e-3), loss=spec.loss, metrics=[m() for m in spec.metrics]
        )
        t0 = time.perf_counter()
        spec.model.fit(x, y, batch_size=a.batch_size, epochs=a.epochs, shuffle=True, verbose=0)
        seconds = time.perf_counter() - t0
        result = spec.model.evaluate(
            test["features"], test["label"], batch_size=4096, verbose=0, return_dict=True
        )
        seen = int(np.sum(failures < h * 60))  # failures the training span saw coming
        row = {
            "hours": h,
            "windows": len(y),
            "positives": int(y.sum()),
            "failures": seen,
            "precision": round(float(result["precision"]), 3),
            "recall": round(float(result["recall"]), 3),
            "auc": round(float(result["auc"]), 3),
            "train_seconds": round(seconds, 1),
        }
        rows.append(row)
        print(
            f"{h:>5} {row['windows']:>8} {row['positives']:>6} {seen:>8} {row['precision']:>9.3f} "
            f"{row['recall']:>6.3f} {row['auc']:>5.3f} {seconds:>5.1f}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"check": "train_failures_learning_curve", "args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
