"""SYNTHETIC sensor readings of a fleet of train components, labelled "fails within the next hour".

Nothing here is measured on a real train. It is a simulation made to have the shape of the
book's first scenario (predictive maintenance from multivariate time series): plausible
units and magnitudes, a hidden degradation process that only shows through noisy sensors,
rare failures, and a label that recent history predicts but does not give away.

The simulated component is a traction unit of one bogie (motor, axle bearing, brake). Each
minute it reports one reading of `SENSORS`:

- speed_kmh, motor_current_a, motor_temp_c, bearing_temp_c, vibration_rms (mm/s),
  brake_pressure_bar, ambient_temp_c.

Hidden state, per component:

- operating regime: a route class (regional or intercity top speed), cruising at a speed
  that changes every ~25 minutes, stops where the passenger load changes; speed and load
  drive current, temperatures (first-order lags) and vibration, so a reading is high
  because the train is working hard as often as because it is wearing out;
- health: a new unit is healthy for an exponential time (mean `MEAN_HEALTHY_HOURS`), then
  wear starts at `WEAR_ONSET` and grows exponentially (accelerating wear) at a rate drawn
  per unit (log-normal, median `MEDIAN_WEAR_HOURS` from onset to failure), faster under
  load, with multiplicative noise. Each unit has one of three failure modes
  (`FAILURE_MODES`: bearing, motor winding, brake leak), each with its own signature in
  vibration, bearing and motor temperature, current and brake pressure, growing with the
  square of wear (early wear is invisible in the noise). A model that has seen only a few
  failures has not seen every signature: that is why more data helps;
- confounders that are not wear: wheel flats (vibration x1.5-3 for ~3 hours, every ~2 days
  per unit), track shocks (one-minute spikes), hot afternoons, heavy loads;
- a failure happens in the minute wear reaches 1: that minute's reading is the failed unit's
  last; it is replaced and the next minute's reading is from a new, healthy unit (new
  sensor calibration).

Label: the reading of component c at minute t has `fails_within_hour` = 1 iff c fails at a
minute f with t <= f < t + 60. With the defaults about 2.5-3 % of readings are positive
(about 10 failures per simulated hour in the 320-unit fleet).

Determinism: the stream is a function of (num_components, seed) only. Randomness is drawn
per aligned block of 60 simulated minutes from `SeedSequence(seed, spawn_key=(1, block))`,
so how the stream is cut into chunks does not change a single value.

Size and rate: a reading is `BYTES_PER_READING` (52) bytes as stored (int64 component, t
and label, seven float32 sensors), so the fleet produces `bytes_per_simulated_hour(n)`
= 60 * 52 * n bytes per simulated hour. The book's fleet grows by 1 GB an hour; ours is
scaled down by `DEFAULT_SCALE` (1/1000) to `DEFAULT_BYTES_PER_HOUR` = 1 MB per simulated
hour, which is `DEFAULT_NUM_COMPONENTS` = 320 components. How fast simulated time runs
against the wall clock is the streamer's choice (`simulated_minutes_per_second`).
"""

from __future__ import annotations

import math

import numpy as np

# name -> (NumPy dtype name, per-record shape), the `mlmesh.transform.Schema` shape.
Schema = dict[str, tuple[str, tuple[int, ...]]]

SENSORS: tuple[str, ...] = (
    "speed_kmh",
    "motor_current_a",
    "motor_temp_c",
    "bearing_temp_c",
    "vibration_rms",
    "brake_pressure_bar",
    "ambient_temp_c",
)
LABEL = "fails_within_hour"
SCHEMA: Schema = {
    "component": ("int64", ()),
    "t": ("int64", ()),
    **{name: ("float32", ()) for name in SENSORS},
    LABEL: ("int64", ()),
}
HORIZON_MINUTES = 60
BYTES_PER_READING = sum(np.dtype(dtype).itemsize for dtype, _ in SCHEMA.values())

BOOK_BYTES_PER_HOUR = 1_000_000_000
DEFAULT_SCALE = 1 / 1000
DEFAULT_BYTES_PER_HOUR = round(BOOK_BYTES_PER_HOUR * DEFAULT_SCALE)

# Degradation process (see the module docstring).
MEAN_HEALTHY_HOURS = 24.0
MEDIAN_WEAR_HOURS = 6.0
WEAR_RATE_SIGMA = 0.4  # log-normal spread of the per-unit wear rate
WEAR_NOISE = 0.01  # per-minute multiplicative noise on wear
WEAR_ONSET = 0.05
MEAN_HOURS_BETWEEN_FLATS = 48.0  # wheel flats: vibration that is not wear
# Failure modes, each with its own signature: what full wear adds to
# (vibration factor, bearing temp degC, motor temp degC, current A, brake pressure bar).
FAILURE_MODES: dict[str, tuple[float, float, float, float, float]] = {
    "bearing": (3.0, 30.0, 0.0, 10.0, 0.0),
    "motor_winding": (0.5, 0.0, 25.0, 50.0, 0.0),
    "brake_leak": (0.3, 8.0, 0.0, 20.0, -1.2),
}
FAILURE_MODE_SHARES = (0.5, 0.3, 0.2)

_BLOCK = 60  # minutes per block of random draws
_EFFECTS = np.array(list(FAILURE_MODES.values()))  # [mode, effect]
_ROUTE_TOP_SPEED = (120.0, 200.0)  # regional, intercity (km/h)
_REGIME_CHANGE_PER_MINUTE = 1 / 25
_STOP_FRACTION = 0.3  # of regime changes that are a stop


def bytes_per_simulated_hour(num_components: int) -> int:
    """Bytes one simulated hour of the fleet takes as stored (SCHEMA's itemsizes)."""
    return HORIZON_MINUTES * BYTES_PER_READING * num_components


def components_for(bytes_per_hour: float) -> int:
    """The largest fleet whose stream is at most `bytes_per_hour` per simulated hour (at least 1)."""
    return max(1, int(bytes_per_hour // bytes_per_simulated_hour(1)))


DEFAULT_NUM_COMPONENTS = components_for(DEFAULT_BYTES_PER_HOUR)


def simulated_minutes_per_second(bytes_per_hour: float, num_components: int) -> float:
    """How many simulated minutes per wall-clock second a streamer must emit for the stream
    to carry `bytes_per_hour` bytes per wall-clock hour."""
    if bytes_per_hour <= 0:
        raise ValueError(f"bytes_per_hour = {bytes_per_hour} must be > 0")
    return bytes_per_hour / bytes_per_simulated_hour(num_components) * 60.0 / 3600.0


class FleetSimulator:
    """A seeded, endless stream of fleet readings, cut into chunks by the caller.

    `next_chunk(m)` returns the next m simulated minutes of every component as columns
    (SCHEMA), time-major: the first num_components rows are minute `minute` for components
    0..n-1, and so on. The simulation runs up to two hours ahead of what was returned,
    because a label looks an hour into the future. Not thread-safe: one caller at a time.
    """

    def __init__(self, num_components: int = DEFAULT_NUM_COMPONENTS, seed: int = 0) -> None:
        if not 1 <= num_components <= 10**6:
            raise ValueError(f"num_components = {num_components} is outside 1..1000000")
        self.num_components = num_components
        self.seed = seed
        self._t_emitted = 0  # first minute not yet returned
        self._t_simulated = 0  # first minute not yet simulated
        # Simulated, not yet returned: readings [minutes, n, S] and failure flags [minutes, n].
        self._readings = np.empty((0, num_components, len(SENSORS)), np.float32)
        self._fails = np.empty((0, num_components), bool)
        self._failure_c: list[np.ndarray] = []
        self._failure_t: list[np.ndarray] = []
        self._init_state(self._rng(0))

    @property
    def minute(self) -> int:
        """The simulated minute the next chunk starts at."""
        return self._t_emitted

    def next_chunk(self, minutes: int) -> dict[str, np.ndarray]:
        """The next `minutes` simulated minutes of the fleet (minutes * num_components rows)."""
        if minutes < 1:
            raise ValueError(f"minutes = {minutes} must be >= 1")
        t0, n = self._t_emitted, self.num_components
        self._simulate_until(t0 + minutes + HORIZON_MINUTES)
        # fails[k] is minute t0+k; a reading is positive if it or one of the next 59 is set.
        window = self._fails[: minutes + HORIZON_MINUTES - 1].astype(np.int32)
        csum = np.concatenate([np.zeros((1, n), np.int32), np.cumsum(window, axis=0)])
        label = (csum[HORIZON_MINUTES : HORIZON_MINUTES + minutes] - csum[:minutes]) > 0
        readings = self._readings[:minutes]
        self._readings = self._readings[minutes:]
        self._fails = self._fails[minutes:]
        self._t_emitted += minutes
        out: dict[str, np.ndarray] = {
            "component": np.tile(np.arange(n, dtype=np.int64), minutes),
            "t": np.repeat(np.arange(t0, t0 + minutes, dtype=np.int64), n),
        }
        for s, name in enumerate(SENSORS):
            out[name] = np.ascontiguousarray(readings[:, :, s].reshape(-1))
        out[LABEL] = label.reshape(-1).astype(np.int64)
        return out

    def failures(self) -> dict[str, np.ndarray]:
        """Every failure simulated so far, {"component", "t"} int64, in time order. Covers at
        least the hour after the last returned minute (the labels' horizon)."""
        if not self._failure_c:
            return {"component": np.empty(0, np.int64), "t": np.empty(0, np.int64)}
        return {"component": np.concatenate(self._failure_c), "t": np.concatenate(self._failure_t)}

    # -- simulation ------------------------------------------------------------------

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=key)))

    def _init_state(self, rng: np.random.Generator) -> None:
        """Start the fleet mid-life, not all new: otherwise nothing fails for hours and the
        positive rate drifts for a day before it settles."""
        n = self.num_components
        self._top_speed = rng.choice(_ROUTE_TOP_SPEED, size=n)
        self._speed = rng.uniform(0.0, 1.0, n) * self._top_speed
        self._target = self._speed.copy()
        self._load = rng.uniform(0.2, 1.0, n)
        self._climate = rng.normal(0.0, 4.0, n)  # where the unit runs: warmer or colder than average
        self._calibration = np.exp(rng.normal(0.0, 0.2, n))
        self._bias_temp = rng.normal(0.0, 1.5, n)
        self._flat = np.ones(n)
        self._flat_left = np.zeros(n)
        self._rate = self._draw_rate(rng, n)
        self._mode = self._draw_mode(rng, n)
        # The share of its life a unit spends wearing, so that the start looks like any other time.
        wear_share = MEDIAN_WEAR_HOURS / (MEDIAN_WEAR_HOURS + MEAN_HEALTHY_HOURS)
        wearing = rng.uniform(size=n) < wear_share
        # Exponential growth spends equal time per factor of wear: uniform in log(wear).
        log_span = -math.log(WEAR_ONSET)
        self._wear = np.where(wearing, WEAR_ONSET * np.exp(rng.uniform(0.0, log_span, n)), 0.0)
        self._healthy_left = np.where(wearing, 0.0, rng.exponential(MEAN_HEALTHY_HOURS * 60.0, n))
        ambient = self._ambient(0) + self._climate
        self._motor_temp = ambient + 30.0 * self._effort()
        self._bearing_temp = ambient + 20.0 * self._effort()

    @staticmethod
    def _draw_rate(rng: np.random.Generator, n: int) -> np.ndarray:
        """Per-minute growth rate of log(wear): the median reaches 1 from onset in MEDIAN_WEAR_HOURS."""
        median = -math.log(WEAR_ONSET) / (MEDIAN_WEAR_HOURS * 60.0)
        return median * np.exp(rng.normal(0.0, WEAR_RATE_SIGMA, n))

    @staticmethod
    def _draw_mode(rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(len(FAILURE_MODES), size=n, p=FAILURE_MODE_SHARES)

    @staticmethod
    def _ambient(t: int) -> float:
        """Daily cycle, coldest at 04:00 (t = 0 is midnight)."""
        return 12.0 - 7.0 * math.cos(2.0 * math.pi * (t / 1440.0 - 4.0 / 24.0))

    def _effort(self) -> np.ndarray:
        """0..~1.3: how hard the unit works this minute (speed against a 160 km/h reference,
        heavier with passengers)."""
        return (self._speed / 160.0) * (0.6 + 0.4 * self._load)

    def _simulate_until(self, t_end: int) -> None:
        """Simulate whole aligned blocks until minute t_end - 1 is simulated."""
        readings, fails = [], []
        while self._t_simulated < t_end:
            r, f = self._simulate_block(self._t_simulated // _BLOCK)
            readings.append(r)
            fails.append(f)
        if readings:
            self._readings = np.concatenate([self._readings, *readings])
            self._fails = np.concatenate([self._fails, *fails])

    def _simulate_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        n, m = self.num_components, _BLOCK
        rng = self._rng(1, block)
        # Every draw of the block up front, in a fixed order: the stream stays seed-stable.
        change = rng.uniform(size=(m, n)) < _REGIME_CHANGE_PER_MINUTE
        stop = rng.uniform(size=(m, n)) < _STOP_FRACTION
        cruise = rng.uniform(0.45, 1.0, (m, n))
        new_load = rng.uniform(0.2, 1.0, (m, n))
        speed_noise = rng.normal(0.0, 1.5, (m, n))
        wear_noise = rng.normal(0.0, WEAR_NOISE, (m, n))
        sensor_noise = rng.normal(0.0, 1.0, (m, n, len(SENSORS)))
        shocks = rng.uniform(size=(m, n)) < 0.01  # track joints, points: vibration spikes
        flat_start = rng.uniform(size=(m, n)) < 1.0 / (MEAN_HOURS_BETWEEN_FLATS * 60.0)
        flat_draw = rng.uniform(1.5, 3.0, (m, n))
        flat_minutes = rng.exponential(180.0, (m, n))
        healthy_draw = rng.exponential(MEAN_HEALTHY_HOURS * 60.0, (m, n))
        rate_draw = self._draw_rate(rng, m * n).reshape(m, n)
        mode_draw = self._draw_mode(rng, m * n).reshape(m, n)
        calibration_draw = np.exp(rng.normal(0.0, 0.2, (m, n)))
        bias_draw = rng.normal(0.0, 1.5, (m, n))

        readings = np.empty((m, n, len(SENSORS)), np.float32)
        fails = np.zeros((m, n), bool)
        for k in range(m):
            t = block * m + k
            # Regime: a new cruising speed or a stop (where passengers get on and off).
            target = np.where(stop[k], 0.0, cruise[k] * self._top_speed)
            self._target = np.where(change[k], target, self._target)
            at_stop = self._speed < 3.0
            self._load = np.where(at_stop & change[k], new_load[k], self._load)
            previous = self._speed
            self._speed = np.clip(
                self._speed + 0.35 * (self._target - self._speed) + speed_noise[k], 0.0, None
            )
            accel = self._speed - previous
            effort = self._effort()

            # Health: healthy units count down to onset, worn ones wear faster under effort.
            worn = self._wear > 0.0
            self._wear = np.where(
                worn, self._wear * np.exp(self._rate * (0.6 + 0.5 * effort) + wear_noise[k]), 0.0
            )
            self._healthy_left = np.where(worn, 0.0, self._healthy_left - 1.0)
            onset = ~worn & (self._healthy_left <= 0.0)
            self._wear = np.where(onset, WEAR_ONSET, self._wear)
            w2 = np.minimum(self._wear, 1.0) ** 2
            vib_w, bearing_w, motor_w, current_w, brake_w = (w2 * e for e in _EFFECTS[self._mode].T)

            # Wheel flats: vibration up for hours without any wear (until the wheel is re-profiled).
            self._flat_left = np.where(flat_start[k], flat_minutes[k], self._flat_left - 1.0)
            self._flat = np.where(
                flat_start[k], flat_draw[k], np.where(self._flat_left > 0.0, self._flat, 1.0)
            )
            ambient = self._ambient(t) + self._climate
            current = (
                40.0 + 160.0 * effort + 4.0 * np.clip(accel, 0.0, None) + current_w * (self._speed > 5.0)
            )
            self._motor_temp += (ambient + 0.25 * current + motor_w - self._motor_temp) / 20.0
            self._bearing_temp += (ambient + 22.0 * effort + bearing_w + 5.0 - self._bearing_temp) / 15.0
            vibration = (0.5 + 1.5 * self._speed / 160.0) * self._calibration * self._flat * (1.0 + vib_w)
            vibration = vibration * np.where(shocks[k], 3.0, 1.0)
            brake = 5.0 - 0.08 * np.clip(-accel, 0.0, None) + brake_w

            z = sensor_noise[k]
            readings[k, :, 0] = np.clip(self._speed + 0.5 * z[:, 0], 0.0, None)
            readings[k, :, 1] = current + 4.0 * z[:, 1]
            readings[k, :, 2] = self._motor_temp + self._bias_temp + 0.8 * z[:, 2]
            readings[k, :, 3] = self._bearing_temp + self._bias_temp + 0.8 * z[:, 3]
            readings[k, :, 4] = vibration * np.exp(0.2 * z[:, 4])
            readings[k, :, 5] = brake + 0.05 * z[:, 5]
            readings[k, :, 6] = ambient + 0.3 * z[:, 6]

            # Failure, then replacement: the next minute reads a new unit.
            failed = self._wear >= 1.0
            if failed.any():
                fails[k] = failed
                idx = np.flatnonzero(failed)
                self._failure_c.append(idx.astype(np.int64))
                self._failure_t.append(np.full(len(idx), t, np.int64))
                self._wear[idx] = 0.0
                self._healthy_left[idx] = healthy_draw[k, idx]
                self._rate[idx] = rate_draw[k, idx]
                self._mode[idx] = mode_draw[k, idx]
                self._calibration[idx] = calibration_draw[k, idx]
                self._bias_temp[idx] = bias_draw[k, idx]
        self._t_simulated += m
        return readings, fails
