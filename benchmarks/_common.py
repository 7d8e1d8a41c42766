"""What every benchmark shares: child processes, port files, line-protocol helpers, medians,
the result table and the JSON file.

Contracts:

- Every child is started from the main thread in its own session, with its output in
  `<run_dir>/logs/<name>.log`, and gets PR_SET_PDEATHSIG=SIGTERM (Linux): it dies when the
  benchmark dies, even on SIGKILL. `Children` stops them all (SIGTERM to the process group,
  then SIGKILL) when its `with` block ends, whatever ended it.
- Results are `{"benchmark": NAME, "cases": [{"name", "unit", "value", "baseline_name",
  "baseline", "ratio"}]}`; value and baseline come from the same run and `ratio` is
  value / baseline (for a time, lower is better; for a rate, higher is better).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the services' packages, when run as `python benchmarks/<name>.py`
    sys.path.insert(1, str(ROOT))
PYTHON = sys.executable
LOOPBACK = "127.0.0.1"
# Lines a role child prints with this prefix are protocol messages; anything else is ignored.
MSG_PREFIX = "@@bench "
_PR_SET_PDEATHSIG = 1


# --- results --------------------------------------------------------------------------


@dataclass
class Case:
    """One row: our figure and the baseline's, measured in the same run."""

    name: str
    unit: str
    value: float
    baseline_name: str
    baseline: float
    note: str = ""  # printed under the table, not written to JSON

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "value": round(self.value, 4),
            "baseline_name": self.baseline_name,
            "baseline": round(self.baseline, 4),
            "ratio": round(self.ratio, 4),
        }


def write_json(path: Path | None, benchmark: str, cases: Sequence[Case]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"benchmark": benchmark, "cases": [c.to_json() for c in cases]}, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")


def _fmt(x: float) -> str:
    if x != x:  # NaN
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def print_table(benchmark: str, cases: Sequence[Case]) -> None:
    """A plain-text table: the figure and its baseline side by side, and their ratio."""
    rows = [("case", "unit", "value", "baseline", "baseline value", "ratio")]
    rows += [
        (c.name, c.unit, _fmt(c.value), c.baseline_name, _fmt(c.baseline), f"{c.ratio:.2f}") for c in cases
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\n== {benchmark} ==  (ratio = value / baseline)")
    for i, row in enumerate(rows):
        print(
            "  ".join(
                cell.rjust(w) if j >= 2 and j != 3 else cell.ljust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    notes = [f"  * {c.name}: {c.note}" for c in cases if c.note]
    if notes:
        print("\n".join(notes))
    print()


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return float(ordered[rank - 1])


# --- the command line -------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, default=None, help="Write the results here as JSON.")
    p.add_argument("--quick", action="store_true", help="A ~30 s smoke run (fewer, shorter repetitions).")
    p.add_argument("--reps", type=int, default=0, help="Repetitions (0: 5, or 1 with --quick).")
    p.add_argument(
        "--max-load",
        type=float,
        default=1.5,
        help="Wait (bounded by --load-wait) until the 1-minute load average is below this before starting.",
    )
    p.add_argument(
        "--load-wait",
        type=float,
        default=None,
        help="Most seconds to wait for a quiet machine (60; quick: 0).",
    )
    p.add_argument(
        "--run-dir", type=Path, default=None, help="Scratch directory (default: a fresh temp dir)."
    )
    p.add_argument("--keep", action="store_true", help="Keep the scratch directory (logs) afterwards.")
    p.add_argument("--role", default="", help=argparse.SUPPRESS)  # child processes of the benchmark
    return p


def reps_of(args: argparse.Namespace, full: int = 5, quick: int = 1) -> int:
    return args.reps or (quick if args.quick else full)


def wait_for_quiet(args: argparse.Namespace) -> None:
    """Block until the 1-minute load average drops below --max-load, for at most --load-wait
    seconds (default 60, 0 with --quick).

    The machine is shared; ratios from one run stay meaningful under load, but a
    quieter machine gives tighter spreads. Prints what it saw either way.
    """
    max_load = args.max_load
    max_wait = args.load_wait if args.load_wait is not None else (0.0 if args.quick else 60.0)
    deadline = time.monotonic() + max_wait
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        print(f"load average {load:.2f} >= {max_load}; waiting (up to {max_wait:.0f}s in all)", flush=True)
        time.sleep(min(10.0, max(0.1, deadline - time.monotonic())))
        load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f} (1 min), {os.cpu_count()} cores", flush=True)


def machine_line() -> str:
    return (
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
        f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )


@contextlib.contextmanager
def scratch_dir(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    import shutil
    import tempfile

    if args.run_dir is not None:
        args.run_dir.mkdir(parents=True, exist_ok=True)
        yield args.run_dir
        return
    path = Path(tempfile.mkdtemp(prefix=f"mlmesh-bench-{prefix}-"))
    try:
        yield path
    finally:
        if args.keep:
            print(f"scratch directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end the benchmark like Ctrl-C does, so every `finally` (teardown) runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def free_port() -> int:
    """A currently free loopback port, for servers that need their address before they start
    (tf.distribute clusters). Racy by nature; only used where the API leaves no choice."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# --- child processes --------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return hook


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Child:
    """One child process. With `protocol=True` it talks JSON lines over stdin/stdout."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port_file: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _lines: queue.Queue[dict[str, Any] | None] | None = None

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.info['port']}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_port_file(self, timeout: float) -> dict[str, Any]:
        assert self.port_file is not None
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before writing its port file:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} wrote no port file within {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.info = json.loads(self.port_file.read_text())
        return self.info

    # -- line protocol (role children) --

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> dict[str, Any]:
        assert self._lines is not None
        try:
            msg = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"{self.name} sent nothing within {timeout:.0f}s:\n{self.log_tail()}"
            ) from None
        if msg is None:
            raise RuntimeError(f"{self.name} exited (code {self.proc.poll()}):\n{self.log_tail()}")
        if "error" in msg:
            raise RuntimeError(f"{self.name} failed: {msg['error']}\n{self.log_tail()}")
        return msg

    def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(message)
        return self.recv(timeout)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the child's process group, then SIGKILL it if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # The group may hold stragglers even when its leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _pump(stream: IO[bytes], out: queue.Queue[dict[str, Any] | None], log: IO[bytes]) -> None:
    try:
        for raw in stream:
            line = raw.decode(errors="replace")
            if line.startswith(MSG_PREFIX):
                out.put(json.loads(line[len(MSG_PREFIX) :]))
            else:
                log.write(raw)
                log.flush()
    except (OSError, ValueError):
        pass
    finally:
        out.put(None)


class Children:
    """Starts children and guarantees they are all stopped when the `with` block ends."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self._extra_pids: list[int] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port_file: Path | None = None,
        protocol: bool = False,
        env: dict[str, str] | None = None,
        wait: float | None = 90.0,
    ) -> Child:
        """Start `argv`; with `port_file`, block (up to `wait` s) until the file appears."""
        if port_file is not None:
            port_file.unlink(missing_ok=True)
        log_path = self.logs / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115  # owned by the child's lifetime
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env or child_env(),
            stdin=subprocess.PIPE if protocol else subprocess.DEVNULL,
            stdout=subprocess.PIPE if protocol else log,
            stderr=log,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # started from the main thread only
        )
        child = Child(name, proc, log_path, port_file)
        self.children.append(child)
        if protocol:
            assert proc.stdout is not None
            child._lines = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, child._lines, log), daemon=True).start()
        if port_file is not None and wait is not None:
            child.wait_port_file(wait)
        return child

    def also_kill(self, pid: int) -> None:
        """A grandchild in another session (Envoy): killed at teardown if still alive."""
        self._extra_pids.append(pid)

    def stop_all(self, grace: float = 10.0) -> None:
        for child in reversed(self.children):
            try:
                child.stop(grace)
            except Exception as e:  # keep stopping the others
                print(f"warning: stopping {child.name}: {e}", file=sys.stderr)
        for pid in self._extra_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.children.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def service_argv(module: str, port_file: Path, *args: str) -> list[str]:
    """`python -m <service>` on loopback with an ephemeral port, JSON logs, quick shutdown."""
    return [
        PYTHON, "-m", module,
        "--host", LOOPBACK, "--port", "0", "--port-file", str(port_file),
        "--log-format", "json", "--log-level", "warning",
        "--grace-seconds", "1", "--drain-seconds", "0",
        *args,
    ]  # fmt: skip


def role_argv(script: str, role: str, *args: str) -> list[str]:
    return [PYTHON, str(ROOT / "benchmarks" / script), "--role", role, *args]


# --- CPU accounting ------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_stat(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, minor page faults) of process `pid` (all its threads) so far;
    (NaN, 0) if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return float("nan"), 0
    # After the command: state is field 3 of stat(5); minflt is 10, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(fields[7])


def cpu_seconds(pid: int) -> float:
    return proc_stat(pid)[0]


class CpuSampler:
    """Samples the CPU time of named processes every `interval` seconds in a thread, so the CPU a
    system spent inside a measured window (perf_counter times, which are CLOCK_MONOTONIC and so
    comparable across processes on Linux) can be read afterwards with `between`.

    On 2 shared cores, where the CPU goes is the "why" behind most rates.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._pids: dict[str, int] = {}
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._pids[name] = pid

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._pids.pop(name, None)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pids = dict(self._pids)
            sample = (time.perf_counter(), {name: cpu_seconds(pid) for name, pid in pids.items()})
            with self._lock:
                self._samples.append(sample)
            self._stop.wait(self.interval)

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per process from the last sample at or before t0 to the first at or after t1."""
        with self._lock:
            samples = list(self._samples)
        before = [s for s in samples if s[0] <= t0]
        after = [s for s in samples if s[0] >= t1]
        if not before or not after:
            return {}
        a, b = before[-1][1], after[0][1]
        return {name: b[name] - a[name] for name in b if name in a and b[name] == b[name]}


# --- the role side of the line protocol --------------------------------------------------


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(MSG_PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def serve_commands(handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Answer JSON commands from stdin until EOF or {"cmd": "exit"}; a failure is reported, not fatal."""
    reply({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("cmd") == "exit":
            reply({"bye": True})
            return
        try:
            reply(handler(msg))
        except Exception as e:
            import traceback

            traceback.print_exc()
            reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    print("benchmarks/_common.py is the benchmarks' shared helper, not a benchmark; nothing to run.")
