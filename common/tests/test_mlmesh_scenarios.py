"""The train-failures scenario's pure parts: metrics, settings, the held-out span, bookkeeping;
and its command's refusal of bad input (before anything starts)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from mlmesh.cli.main import app
from mlmesh.data.train_failures import DEFAULT_NUM_COMPONENTS, FleetSimulator
from mlmesh.scenarios import train_failures as scn
from mlmesh.scenarios.metrics import BinaryMetrics, binary_metrics, roc_auc
from mlmesh.scenarios.train_failures import ScenarioConfig, VersionResult, improvement, serving_verdict
from mlmesh.transforms.windows import window_features
from typer.testing import CliRunner

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


# -- metrics ---------------------------------------------------------------------------


def pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """The definition: P(score of a positive > score of a negative), ties half."""
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return float(wins / (len(pos) * len(neg)))


def test_auc_is_the_chance_a_positive_outscores_a_negative_ties_counting_half() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.uniform(size=200) + 0.3 * y, 1)  # rounded: many ties
    assert roc_auc(y, s) == pytest.approx(pairwise_auc(y, s), abs=1e-12)


def test_auc_is_one_for_a_perfect_ranking_zero_for_a_reversed_one_and_half_for_a_constant() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.full(4, 0.5)) == 0.5


def test_auc_of_one_class_only_is_refused() -> None:
    with pytest.raises(ValueError, match="needs both classes; got 0 positives and 3 negatives"):
        roc_auc(np.zeros(3), np.array([0.1, 0.2, 0.3]))


def test_precision_recall_and_f1_count_scores_at_or_above_the_threshold_as_positive() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.5, 0.4, 0.1, 0.7, 0.2, 0.1, 0.1, 0.0, 0.3])
    m = binary_metrics(y, s, threshold=0.5)
    assert (m.examples, m.positives, m.predicted_positives, m.true_positives) == (10, 4, 3, 2)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 4)
    assert m.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_nothing_predicted_positive_gives_zero_precision_not_a_division_error() -> None:
    m = binary_metrics(np.array([1, 0]), np.array([0.2, 0.1]))
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("labels", "scores", "threshold", "message"),
    [
        ([0, 2], [0.1, 0.2], 0.5, "labels must be 0 or 1; found \\[2\\]"),
        ([0, 1], [0.1, math.nan], 0.5, "scores hold NaN or Inf"),
        ([0, 1], [0.1], 0.5, "1 scores for 2 labels"),
        ([0, 1], [0.1, 0.2], 1.0, "threshold = 1.0 must be in \\(0, 1\\)"),
    ],
)
def test_bad_metric_input_is_refused_with_the_reason(
    labels: list[int], scores: list[float], threshold: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        binary_metrics(np.array(labels), np.array(scores), threshold)


# -- settings --------------------------------------------------------------------------


def test_the_default_fleet_is_a_thousandth_of_the_books_and_runs_600_times_faster() -> None:
    cfg = ScenarioConfig().check()
    assert cfg.components == DEFAULT_NUM_COMPONENTS == 320  # 1 MB per simulated hour
    assert cfg.speedup == 600 and cfg.simulated_minutes_per_second == 10
    assert cfg.bytes_per_wall_hour() == pytest.approx(0.6e9, rel=0.01)
    assert cfg.stream_hours() == pytest.approx(50)  # 5 wall minutes: 50 simulated hours at most
    assert ScenarioConfig(speedup=1000).bytes_per_wall_hour() == pytest.approx(1e9, rel=0.01)


def test_the_held_out_span_starts_after_everything_the_stream_and_its_labels_can_reach() -> None:
    short = ScenarioConfig(minutes=1).check()
    assert short.holdout_from_hour == scn.MIN_HOLDOUT_FROM_HOUR  # 10 h of stream: far behind 48
    long = ScenarioConfig(minutes=10.1).check()  # 101 h of stream, labels look one hour further
    assert long.holdout_from_hour == 101 + 1 + 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"minutes": 0}, "--minutes is 0; expected a number of wall minutes in \\(0, 1440\\]"),
        ({"minutes": -1}, "--minutes is -1"),
        ({"minutes": math.nan}, "--minutes is nan"),
        ({"speedup": 0}, "--speedup is 0; expected simulated seconds per wall second in \\[1, 36000\\]"),
        ({"speedup": math.inf}, "--speedup is inf"),
        ({"speedup": 1e6}, "--speedup is 1000000.0"),
        ({"components": 0}, "--components is 0; expected 1..100000"),
        ({"chunk_minutes": 30}, "--chunk-minutes is 30; expected more than --window \\(30\\)"),
        ({"holdout_hours": 0}, "--holdout-hours is 0"),
        ({"holdout_stride": 0}, "--holdout-stride is 0"),
        ({"threshold": 1.5}, "--threshold is 1.5"),
        (
            {"holdout_from_hour": 50},
            "--holdout-from-hour is 50, but the stream may reach simulated hour 50.0",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_option(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScenarioConfig(**changes).check()  # type: ignore[arg-type]


def test_simulated_hours_count_the_chunks_the_windows_came_from() -> None:
    cfg = ScenarioConfig()
    per_chunk = scn.windows_per_chunk(cfg)
    assert per_chunk == 320 * (60 - 30 + 1)  # windows end at the 30th..60th reading of a chunk
    assert scn.simulated_hours(3 * per_chunk, cfg) == 3.0
    assert scn.simulated_hours(0, cfg) == 0.0


# -- the held-out span -----------------------------------------------------------------


def test_the_held_out_span_is_the_fleets_later_hours_windowed_as_the_transform_does() -> None:
    cfg = ScenarioConfig(
        minutes=0.05, components=8, seed=3, holdout_from_hour=5, holdout_hours=2, holdout_stride=3
    ).check()
    held = scn.held_out(cfg)
    # The same fleet, run to hour 5 by hand, in the stream's 60-minute chunks.
    sim = FleetSimulator(8, seed=3)
    sim.next_chunk(5 * 60)
    expected = [window_features(sim.next_chunk(60), window=30, stride=3) for _ in range(2)]
    np.testing.assert_array_equal(held.features, np.concatenate([e["features"] for e in expected]))
    np.testing.assert_array_equal(held.labels, np.concatenate([e["label"] for e in expected]))
    assert (held.from_hour, held.hours) == (5, 2)
    assert held.features.shape == (2 * 8 * 11, 42)  # windows ending at readings 30, 33, ..., 60


def test_the_held_out_span_is_the_same_every_time() -> None:
    cfg = ScenarioConfig(minutes=0.05, components=4, holdout_from_hour=3, holdout_hours=1)
    a, b = scn.held_out(cfg), scn.held_out(cfg)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)


# -- serving and improvement -----------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "verdict"),
    [
        ({"a": {3: "AVAILABLE"}, "b": {3: "AVAILABLE", 2: "END"}}, scn.READY),
        ({"a": {3: "AVAILABLE"}, "b": {3: "LOADING", 2: "AVAILABLE"}}, scn.WAITING),
        ({"a": {3: "AVAILABLE"}, "b": "UNAVAILABLE: connection refused"}, scn.WAITING),
        ({"a": {3: "AVAILABLE"}, "b": {}}, scn.WAITING),  # b has not seen it yet
        ({"a": {3: "UNLOADING", 4: "AVAILABLE"}, "b": {3: "AVAILABLE"}}, scn.SUPERSEDED),
        ({"a": {4: "AVAILABLE"}, "b": {3: "AVAILABLE"}}, scn.SUPERSEDED),  # a skipped 3 for 4
        ({"a": {3: "FAILED", 2: "AVAILABLE"}, "b": {3: "AVAILABLE"}}, scn.FAILED),
        ({}, scn.WAITING),
    ],
)
def test_a_version_is_evaluated_once_every_replica_serves_it(
    states: dict[str, dict[int, str] | str], verdict: str
) -> None:
    assert serving_verdict(states, 3) == verdict


def result(version: int, auc: float | None, recall: float = 0.5) -> VersionResult:
    metrics = None if auc is None else BinaryMetrics(1000, 30, 30, 15, 0.5, recall, 0.5, auc)
    return VersionResult(version, version, version, 100 * version, 1.0 * version, 0, 0.0, 0.0, metrics)


def test_improvement_compares_the_last_evaluated_version_with_the_first_on_auc() -> None:
    report = improvement([result(1, 0.75, 0.2), result(2, None), result(3, 0.93, 0.7), result(4, None)])
    assert report["first_version"] == 1 and report["last_version"] == 3
    assert report["improved"] is True
    assert report["auc_gain"] == pytest.approx(0.18)
    assert report["recall_gain"] == pytest.approx(0.5)
    assert improvement([result(1, 0.9), result(2, 0.8)])["improved"] is False


def test_improvement_needs_two_evaluated_versions() -> None:
    assert improvement([result(1, 0.8), result(2, None)]) == {"versions_evaluated": 1, "improved": None}


# -- the command refuses bad input before starting anything ----------------------------

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--minutes", "0"], "--minutes is 0.0; expected a number of wall minutes in (0, 1440]"),
        (["--speedup", "-5"], "--speedup is -5.0; expected simulated seconds per wall second in [1, 36000]"),
        (["--speedup", "nan"], "--speedup is nan"),
        (["--name", "../x"], "--name '../x': expected letters, digits"),
        (["--log-level", "loud"], "--log-level 'loud' is not one of"),
    ],
)
def test_the_command_refuses_bad_input_clearly_and_starts_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    root = tmp_path / "root"
    result = runner.invoke(app, ["scenario", "train-failures", "--root", str(root), *args])
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert not root.exists()  # no suite was started, nothing was written


def test_the_command_is_listed_with_its_options() -> None:
    result = runner.invoke(app, ["scenario", "--help"])
    assert result.exit_code == 0 and "train-failures" in result.output
    result = runner.invoke(app, ["scenario", "train-failures", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--minutes", "--speedup", "--summary", "--root", "SYNTHETIC"):
        assert option in result.output
