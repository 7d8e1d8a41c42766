"""The seed's scenario pieces: the synthetic fleet (mlmesh.data.train_failures), the windows
transform (mlmesh.transforms.windows) and the failure predictor (mlmesh.models.failure_mlp)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from mlmesh.data import train_failures as tf_data
from mlmesh.errors import InvalidArgument
from mlmesh.transforms import windows as win

pytestmark = pytest.mark.unit


def chunk(minutes: int = 120, n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    return tf_data.FleetSimulator(n, seed=seed).next_chunk(minutes)


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# -- the fleet ----------------------------------------------------------------------------


def test_importing_the_data_transform_and_model_modules_does_not_load_tensorflow() -> None:
    code = (
        "import sys, mlmesh.data.train_failures, mlmesh.transforms.windows, mlmesh.models.failure_mlp; "
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_chunks_have_the_declared_schema_time_major() -> None:
    c = chunk(minutes=5, n=3)
    assert list(c) == list(tf_data.SCHEMA)
    for name, (dtype, shape) in tf_data.SCHEMA.items():
        assert c[name].dtype == np.dtype(dtype) and c[name].shape[1:] == shape, name
        assert len(c[name]) == 15
    np.testing.assert_array_equal(c["component"][:6], [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(c["t"][:6], [0, 0, 0, 1, 1, 1])


def test_the_same_seed_gives_the_same_stream_and_another_seed_another() -> None:
    assert_same(chunk(seed=7), chunk(seed=7))
    assert not np.array_equal(chunk(seed=7)["vibration_rms"], chunk(seed=8)["vibration_rms"])


def test_how_the_stream_is_cut_into_chunks_changes_nothing() -> None:
    a = tf_data.FleetSimulator(16, seed=2)
    parts = [a.next_chunk(m) for m in (1, 59, 90, 30)]
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    assert_same(joined, tf_data.FleetSimulator(16, seed=2).next_chunk(180))
    assert a.minute == 180


def test_a_reading_is_positive_iff_its_component_fails_within_the_next_60_minutes() -> None:
    sim = tf_data.FleetSimulator(64, seed=3)
    c = sim.next_chunk(600)
    f = sim.failures()
    assert len(f["t"]) >= 5  # the check below has failures to look at
    want = np.zeros(len(c["t"]), bool)
    for comp, t_fail in zip(f["component"], f["t"], strict=True):
        want |= (c["component"] == comp) & (c["t"] <= t_fail) & (t_fail < c["t"] + 60)
    np.testing.assert_array_equal(c[tf_data.LABEL], want.astype(np.int64))


def test_failures_are_rare_but_not_too_rare() -> None:
    c = tf_data.FleetSimulator(seed=0).next_chunk(12 * 60)
    rate = c[tf_data.LABEL].mean()
    assert 0.01 < rate < 0.06, rate


def test_a_failed_unit_is_replaced_by_one_that_is_far_from_failing() -> None:
    sim = tf_data.FleetSimulator(64, seed=3)
    c = sim.next_chunk(600)
    f = sim.failures()
    early = f["t"] < 600 - 1
    for comp, t_fail in zip(f["component"][early], f["t"][early], strict=True):
        after = (c["component"] == comp) & (c["t"] == t_fail + 1)
        assert c[tf_data.LABEL][after].item() == 0, (comp, t_fail)


def test_readings_before_a_failure_drift_away_from_the_fleet() -> None:
    c = tf_data.FleetSimulator(seed=0).next_chunk(12 * 60)
    pos = c[tf_data.LABEL] == 1
    for sensor in ("vibration_rms", "bearing_temp_c", "motor_current_a"):
        assert c[sensor][pos].mean() > 1.1 * c[sensor][~pos].mean(), sensor


def test_bytes_per_simulated_hour_is_what_an_hour_of_chunks_holds() -> None:
    c = tf_data.FleetSimulator(10, seed=0).next_chunk(60)
    assert tf_data.bytes_per_simulated_hour(10) == sum(a.nbytes for a in c.values()) == 10 * 60 * 52
    assert tf_data.DEFAULT_NUM_COMPONENTS == tf_data.components_for(1_000_000) == 320
    assert tf_data.bytes_per_simulated_hour(tf_data.DEFAULT_NUM_COMPONENTS) <= tf_data.DEFAULT_BYTES_PER_HOUR


def test_simulated_minutes_per_second_matches_the_rate() -> None:
    per_hour = tf_data.bytes_per_simulated_hour(100)
    # One simulated hour per wall-clock hour is real time: 1/60 simulated minute a second.
    assert tf_data.simulated_minutes_per_second(per_hour, 100) == pytest.approx(1 / 60)
    assert tf_data.simulated_minutes_per_second(120 * per_hour, 100) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="bytes_per_hour"):
        tf_data.simulated_minutes_per_second(0, 100)


# -- the windows transform ----------------------------------------------------------------


def test_the_transform_output_matches_its_declared_schema() -> None:
    spec = win.windows(tf_data.SCHEMA)
    assert spec.output == {
        "features": ("float32", (42,)),
        "label": ("int64", ()),
        "component": ("int64", ()),
        "t": ("int64", ()),
    }
    out = spec.apply(chunk(minutes=60, n=8), "partition 0")  # apply checks the schema
    assert len(out["label"]) == 8 * (60 - win.DEFAULT_WINDOW + 1)


def test_windows_are_deterministic_and_independent_of_row_order() -> None:
    c = chunk(minutes=60, n=8)
    perm = np.random.default_rng(0).permutation(len(c["t"]))
    shuffled = {k: v[perm] for k, v in c.items()}
    spec = win.windows(tf_data.SCHEMA, window="10")
    assert_same(spec.fn(c), spec.fn(shuffled))


def test_a_window_ends_at_its_reading_and_carries_that_readings_label() -> None:
    c = chunk(minutes=600, n=16, seed=3)
    out = win.window_features(c, window=20)
    assert out["label"].sum() > 0
    row = {(int(k), int(t)): i for i, (k, t) in enumerate(zip(c["component"], c["t"], strict=True))}
    src = np.array([row[(int(k), int(t))] for k, t in zip(out["component"], out["t"], strict=True)])
    np.testing.assert_array_equal(out["label"], c[tf_data.LABEL][src])
    assert out["t"].min() == 19  # the first 19 readings of a component end no window


def test_features_are_last_mean_std_slope_min_max_per_sensor() -> None:
    c = chunk(minutes=40, n=2)
    out = win.window_features(c, window=5, sensors=("bearing_temp_c", "vibration_rms"))
    i = int(np.flatnonzero((out["component"] == 1) & (out["t"] == 9))[0])
    names = win.feature_names(("bearing_temp_c", "vibration_rms"))
    got = dict(zip(names, out["features"][i], strict=True))
    x = c["vibration_rms"][(c["component"] == 1) & (c["t"] >= 5) & (c["t"] <= 9)].astype(np.float64)
    slope = np.polyfit(np.arange(5), x, 1)[0]
    want = {"last": x[-1], "mean": x.mean(), "std": x.std(), "slope": slope, "min": x.min(), "max": x.max()}
    for stat, value in want.items():
        assert got[f"vibration_rms_{stat}"] == pytest.approx(value, rel=1e-5, abs=1e-6), stat


def test_stride_keeps_every_strideth_window_ending_at_the_newest_reading() -> None:
    out = win.window_features(chunk(minutes=60, n=3), window=10, stride=7)
    for comp in range(3):
        t = out["t"][out["component"] == comp]
        assert t[-1] == 59 and set(np.diff(t)) == {7} and t[0] >= 9


def test_a_partition_shorter_than_the_window_gives_no_windows() -> None:
    spec = win.windows(tf_data.SCHEMA, window="30")
    out = spec.apply(chunk(minutes=29, n=4), "partition 0")
    assert all(len(a) == 0 for a in out.values())


@pytest.mark.parametrize(
    ("args", "match"),
    [({"window": "1"}, "window = 1 is outside"), ({"width": "3"}, "unknown args"), ({"label": "y"}, "'y'")],
)
def test_bad_transform_args_are_refused_by_name(args: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        win.windows(tf_data.SCHEMA, **args)


def test_a_source_without_a_sensor_column_is_refused_naming_it() -> None:
    schema = {k: v for k, v in tf_data.SCHEMA.items() if k != "motor_temp_c"}
    with pytest.raises(InvalidArgument, match="motor_temp_c"):
        win.windows(schema)


def test_feature_scaling_brings_features_to_order_one() -> None:
    out = win.window_features(tf_data.FleetSimulator(64, seed=1).next_chunk(240))
    offset, scale = win.feature_scaling()
    z = (out["features"] - offset) / scale
    assert np.all(np.abs(z.mean(axis=0)) < 3) and np.all(z.std(axis=0) < 4)


# -- the model ----------------------------------------------------------------------------


def test_the_model_takes_features_and_returns_one_probability_per_window() -> None:
    from mlmesh.models import failure_mlp

    spec = failure_mlp.build(hidden="16")
    assert (list(spec.features), spec.label) == (["features"], "label")
    assert spec.model.output_names == ["probability"]
    assert [m().name for m in spec.metrics] == ["precision", "recall", "auc"]
    p = np.asarray(spec.model(np.zeros((3, 42), np.float32)))
    assert p.shape == (3,) and np.all((p > 0) & (p < 1))


@pytest.mark.parametrize(
    ("args", "match"),
    [({"hidden": "x"}, "not an integer"), ({"pos_weight": "0"}, "outside"), ({"depth": "2"}, "unknown")],
)
def test_bad_model_args_are_refused_by_name(args: dict[str, str], match: str) -> None:
    from mlmesh.models import failure_mlp

    with pytest.raises(ValueError, match=match):
        failure_mlp.parse_args(args)


def test_a_few_hundred_steps_predict_failures_well_above_chance() -> None:
    import keras
    from mlmesh.models import failure_mlp

    sim = tf_data.FleetSimulator(seed=0)
    train = [win.window_features(sim.next_chunk(120)) for _ in range(2)]
    x = np.concatenate([p["features"] for p in train])
    y = np.concatenate([p["label"] for p in train])
    sim.next_chunk(120)
    test = win.window_features(sim.next_chunk(240))
    keras.utils.set_random_seed(0)
    spec = failure_mlp.build()
    spec.model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=spec.loss, metrics=[m() for m in spec.metrics]
    )
    spec.model.fit(x, y, batch_size=256, epochs=3, verbose=0)  # ~540 steps
    got = spec.model.evaluate(test["features"], test["label"], batch_size=4096, verbose=0, return_dict=True)
    # Chance: precision = the positive rate (~0.03), recall = the share predicted positive.
    assert got["precision"] > 0.3 and got["recall"] > 0.3 and got["auc"] > 0.8, got
