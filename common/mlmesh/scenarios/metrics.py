"""Quality of a binary classifier from its scores: precision, recall, F1 at a threshold, ROC AUC.

Pure NumPy (no TensorFlow): the scenario scores what the gateway answered, in the CLI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class BinaryMetrics:
    """Counts and rates of one evaluation. A rate with an empty denominator is 0.0."""

    examples: int
    positives: int
    predicted_positives: int
    true_positives: int
    precision: float
    recall: float
    f1: float
    auc: float

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative, ties counting half (the Mann-Whitney statistic, from average ranks).

    ValueError when the labels hold only one class: the area is then undefined.
    """
    y = _labels(labels)
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold NaN or Inf")
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        raise ValueError(f"ROC AUC needs both classes; got {pos} positives and {neg} negatives")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average rank (1-based) of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> BinaryMetrics:
    """Metrics of `scores` (probability of the positive class) against 0/1 `labels`;
    a score >= `threshold` predicts positive."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold = {threshold} must be in (0, 1)")
    y = _labels(labels)
    s = np.asarray(scores, np.float64).reshape(-1)
    auc = roc_auc(y, s)
    predicted = s >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    pp = int(predicted.sum())
    pos = int(y.sum())
    precision = tp / pp if pp else 0.0
    recall = tp / pos if pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BinaryMetrics(
        examples=len(y),
        positives=pos,
        predicted_positives=pp,
        true_positives=tp,
        precision=precision,
        recall=recall,
        f1=f1,
        auc=auc,
    )


def _labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0 or 1; found {sorted(set(np.unique(y).tolist()) - {0, 1})[:5]}")
    return y.astype(np.int64)
