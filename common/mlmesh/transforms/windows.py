"""Sliding-window features of sensor readings: `mlmesh.transforms.windows:windows`.

Raw readings (one row per component and minute, as `mlmesh.data.train_failures` makes them)
become one record per window: for each component, every run of `window` consecutive
readings of the partition (in time order, every `stride`-th end) gives

    features float32[F]   per sensor, in `sensors` order: last, mean, std, slope, min, max
    label    int64        the label of the window's last reading
    component, t int64    the component and the minute of the window's last reading

with F = 6 * len(sensors) (42 for the seven sensors of train_failures). Summary statistics,
not the raw window flattened: a small MLP learns trends from a slope and a level far more
cheaply than from 30 x 7 raw values, and the record is 5x smaller. Slope is per reading
(least squares against 0..window-1). Features are in the sensors' units; `feature_scaling`
gives the fixed offsets and scales a model normalises them with.

Windows never span partitions: a component's first window - 1 readings of a partition end
no window (the transform sees one partition at a time and must be deterministic). Readings
are sorted by (component, t) first, so row order within the partition does not matter; gaps
in t are not filled (a window is the last `window` readings, not minutes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mlmesh.data import train_failures
from mlmesh.errors import InvalidArgument
from mlmesh.transform import Columns, Schema, TransformSpec

STATS: tuple[str, ...] = ("last", "mean", "std", "slope", "min", "max")
DEFAULT_WINDOW = 30
DEFAULT_SENSORS = train_failures.SENSORS
DEFAULT_LABEL = train_failures.LABEL
_BLOCK = 4096  # windows computed at once: bounds the [windows, window, S] temporary

# Per sensor of train_failures: (typical level, spread) in its units, for feature_scaling.
# Rounded from a day of the default fleet; a sensor not listed is left unscaled.
NOMINAL: dict[str, tuple[float, float]] = {
    "speed_kmh": (80.0, 60.0),
    "motor_current_a": (120.0, 60.0),
    "motor_temp_c": (42.0, 13.0),
    "bearing_temp_c": (28.0, 10.0),
    "vibration_rms": (1.6, 1.4),
    "brake_pressure_bar": (4.9, 1.0),
    "ambient_temp_c": (12.0, 6.0),
}


def feature_names(sensors: tuple[str, ...] = DEFAULT_SENSORS) -> list[str]:
    return [f"{s}_{stat}" for s in sensors for stat in STATS]


def feature_scaling(
    sensors: tuple[str, ...] = DEFAULT_SENSORS, window: int = DEFAULT_WINDOW
) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) float32[F]: (feature - offset) / scale is of order one.

    Levels (last, mean, min, max) use the sensor's nominal level and spread; within-window
    variation (std, slope * window) is a fraction of the spread.
    """
    offset, scale = [], []
    for s in sensors:
        level, spread = NOMINAL.get(s, (0.0, 1.0))
        for stat in STATS:
            if stat == "std":
                offset.append(0.0)
                scale.append(spread / 2.0)
            elif stat == "slope":
                offset.append(0.0)
                scale.append(spread / window)
            else:
                offset.append(level)
                scale.append(spread)
    return np.asarray(offset, np.float32), np.asarray(scale, np.float32)


def _int_arg(args: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = args.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"windows: {key} = {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise InvalidArgument(f"windows: {key} = {value} is outside {low}..{high}")
    return value


def windows(source: Schema, **args: str) -> TransformSpec:
    """The transform factory. Args (strings): window (default 30, 2..1440), stride (default
    1: a window ending at every reading), sensors (comma-separated source columns, default
    the seven of train_failures), label (default fails_within_hour)."""
    known = {"window", "stride", "sensors", "label"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidArgument(f"windows: unknown args {unknown}; accepted {sorted(known)}")
    window = _int_arg(args, "window", DEFAULT_WINDOW, 2, 1440)
    stride = _int_arg(args, "stride", 1, 1, 1440)
    sensors = tuple(s for s in args.get("sensors", ",".join(DEFAULT_SENSORS)).split(",") if s)
    label = args.get("label", DEFAULT_LABEL)
    if not sensors:
        raise InvalidArgument("windows: sensors is empty")
    wanted = {"component": "int", "t": "int", label: "int", **dict.fromkeys(sensors, "float")}
    for name, kind in wanted.items():
        if name not in source:
            raise InvalidArgument(f"windows: source has no column {name!r}; it has {sorted(source)}")
        dtype, shape = source[name]
        ok = np.issubdtype(np.dtype(dtype), np.integer if kind == "int" else np.floating)
        if tuple(shape) != () or not ok:
            raise InvalidArgument(f"windows: column {name!r} is {dtype}{list(shape)}, needs a scalar {kind}")
    output: Schema = {
        "features": ("float32", (len(STATS) * len(sensors),)),
        "label": ("int64", ()),
        "component": ("int64", ()),
        "t": ("int64", ()),
    }

    def fn(columns: Mapping[str, np.ndarray]) -> Columns:
        return window_features(columns, sensors=sensors, label=label, window=window, stride=stride)

    return TransformSpec(output=output, fn=fn)


def window_features(
    columns: Mapping[str, np.ndarray],
    *,
    sensors: tuple[str, ...] = DEFAULT_SENSORS,
    label: str = DEFAULT_LABEL,
    window: int = DEFAULT_WINDOW,
    stride: int = 1,
) -> Columns:
    """The windows of one partition's readings (see the module docstring), ordered by
    (component, t). Pure and deterministic."""
    component = np.asarray(columns["component"], np.int64)
    t = np.asarray(columns["t"], np.int64)
    order = np.lexsort((t, component))
    component, t = component[order], t[order]
    x = np.stack([np.asarray(columns[s], np.float64)[order] for s in sensors], axis=1)  # [n, S]
    n = len(order)
    if n < window:
        return _empty(len(sensors))
    # Window j covers sorted rows j .. j+window-1; it is whole iff both ends are one component.
    starts = np.arange(n - window + 1)
    ends = starts + window - 1
    whole = component[starts] == component[ends]
    # Strided per component, counted back from its last reading so the newest always ends one.
    run_end = np.searchsorted(component, component[ends], side="right") - 1
    keep = whole & ((run_end - ends) % stride == 0)
    starts, ends = starts[keep], ends[keep]
    features = np.empty((len(starts), len(sensors) * len(STATS)), np.float32)
    k = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
    for b in range(0, len(starts), _BLOCK):
        w = x[starts[b : b + _BLOCK, None] + np.arange(window)]  # [m, window, S]
        mean = w.mean(axis=1)
        slope = np.einsum("k,mks->ms", k, w - mean[:, None, :]) / np.sum(k * k)
        stats = np.stack([w[:, -1], mean, w.std(axis=1), slope, w.min(axis=1), w.max(axis=1)], axis=2)
        features[b : b + _BLOCK] = stats.reshape(len(stats), -1)  # [m, S, STATS]: sensor-major
    return {
        "features": features,
        "label": np.asarray(columns[label], np.int64)[order][ends],
        "component": component[ends],
        "t": t[ends],
    }


def _empty(num_sensors: int) -> Columns:
    return {
        "features": np.empty((0, len(STATS) * num_sensors), np.float32),
        "label": np.empty(0, np.int64),
        "component": np.empty(0, np.int64),
        "t": np.empty(0, np.int64),
    }
