"""Helpers for tests that run real mlmesh processes: start, wait for the port
file, tear down (SIGTERM, then SIGKILL on timeout), and Fashion-MNIST data."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def fashion_available() -> bool:
    return all((FASHION_DIR / f).exists() for pair in FASHION_FILES.values() for f in pair)


def load_fashion(split: str, limit: int | None = None) -> dict[str, np.ndarray]:
    """{"image": uint8 [n,28,28], "label": int64 [n]} from the idx files
    (16-byte header for images, 8 for labels)."""
    images_file, labels_file = FASHION_FILES[split]
    with gzip.open(FASHION_DIR / images_file) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_DIR / labels_file) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return {"image": np.ascontiguousarray(images), "label": labels}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port_file: Path
    log_path: Path
    info: dict[str, int] = field(default_factory=dict)
    _log: IO[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.info['port']}"

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def terminate(self) -> None:
        """SIGTERM without waiting (see stop)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
    out["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return out


def start(
    name: str, args: list[str], workdir: Path, wait: bool = True, timeout: float = 60.0, port: int = 0
) -> Proc:
    """Run `python -m <args> --port <port> --port-file ...` with its log in workdir/<name>.log."""
    port_file = workdir / f"{name}.port.json"
    log_path = workdir / f"{name}.log"
    port_file.unlink(missing_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 (closed by Proc.stop)
    cmd = [
        sys.executable,
        "-m",
        *args,
        "--port",
        str(port),
        "--port-file",
        str(port_file),
        "--log-format",
        "json",
    ]
    popen = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT)
    proc = Proc(name, popen, port_file, log_path, _log=log)
    if wait:
        wait_ready(proc, timeout)
    return proc


def wait_ready(proc: Proc, timeout: float = 60.0) -> Proc:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        if proc.port_file.exists():
            with contextlib.suppress(ValueError):
                proc.info = json.loads(proc.port_file.read_text())
                return proc
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"{proc.name} wrote no port file in {timeout}s:\n{proc.log_tail()}")


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects started processes and stops them all (in reverse order) on exit."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()
