"""Run `python -m ingest_svc` as a real process for integration and fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class IngestProcess:
    """One ingest server process; `close()` always leaves it dead."""

    def __init__(self, data_dir: Path, run_dir: Path, *extra_args: str) -> None:
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.extra_args = extra_args
        self.port_file = run_dir / "ingest-port.json"
        self.log_file = run_dir / "ingest.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> IngestProcess:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)  # a kill -9 leaves the old one behind
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        args = [
            sys.executable, "-m", "ingest_svc",
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(self.port_file),
            "--metrics-port", "0", "--data-dir", str(self.data_dir),
            "--log-format", "json", "--grace-seconds", "1", "--drain-seconds", "0",
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingest exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"ingest wrote no port file in {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        ports = json.loads(self.port_file.read_text())
        assert ports["pid"] == self.proc.pid
        self.port, self.metrics_port = ports["port"], ports["metrics_port"]
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code (kills on timeout)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
