"""Generate a synthetic customer-churn table:

    python -m examples.tabular.generate --out churn.npz [--rows 20000] [--seed 0]

Each customer has six numeric attributes, a region (0..49) and whether they
churned. Churn odds rise with support calls, late payments and price, fall
with tenure, and vary by region (a per-region effect the model can only learn
through the region embedding).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from examples.tabular.data import LABEL, NUM_REGIONS, NUMERIC, REGION


def generate(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tenure = np.minimum(rng.exponential(24.0, rows), 120.0)
    plan = rng.choice([30.0, 55.0, 80.0, 110.0], size=rows, p=[0.25, 0.35, 0.28, 0.12])
    monthly = np.maximum(plan + rng.normal(0.0, 8.0, rows), 10.0)
    calls = rng.poisson(1.5, rows).astype(np.float64)
    data_gb = rng.gamma(2.0, 6.0, rows)
    age = np.clip(rng.normal(45.0, 14.0, rows), 18.0, 90.0)
    late = rng.poisson(0.8, rows).astype(np.float64)
    region = rng.integers(0, NUM_REGIONS, rows)
    region_effect = np.random.default_rng(seed + 1).normal(0.0, 1.0, NUM_REGIONS)
    logit = (
        -1.0
        - 0.05 * tenure
        + 0.025 * (monthly - 65.0)
        + 0.6 * calls
        + 0.5 * late
        - 0.01 * (age - 45.0)
        + 1.2 * region_effect[region]
    )
    churned = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    numeric = np.stack([tenure, monthly, calls, data_gb, age, late], axis=1).astype(np.float32)
    return {NUMERIC: numeric, REGION: region.astype(np.int64), LABEL: churned.astype(np.int64)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = generate(args.rows, args.seed)
    np.savez(args.out, **table)
    print(f"wrote {args.rows} rows to {args.out} (churn rate {table[LABEL].mean():.1%})")


if __name__ == "__main__":
    main()
