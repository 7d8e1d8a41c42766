"""`mlmesh scale serving|workers N`: how many serving replicas or trainer workers a running
`mlmesh up` keeps.

The command writes the wanted counts to `<root>/run/scale.json` (atomically, merged with
what is there) and `mlmesh up` reconciles its children with it (`Scaler.poll`, every half
second): it starts the missing ones (lowest free index first) and removes the surplus
(highest index first). A new replica registers itself in the suite's registry once SERVING
and the gateway's control plane hands it to Envoy; a removed one deregisters first, turns
NOT_SERVING and drains its in-flight calls before it stops, so no request fails. The command
returns once suite.json shows that many running (bounded by `--timeout`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from mlmesh.cli.common import DEFAULT_ROOT, SUITE_FILE, console, fail
from mlmesh.files import atomic_write_json
from mlmesh.logging import get_logger
from mlmesh.supervisor import ServiceSpec, Supervisor, SupervisorError

SCALE_FILE = "run/scale.json"
# What can be scaled, and the prefix of its children's names in the suite.
KINDS: Mapping[str, str] = {"serving": "serving-", "workers": "worker-"}
MAX_COUNT = 64

log = get_logger("mlmesh.scale")


def read_wanted(path: Path) -> dict[str, int]:
    """The counts in a scale file; {} if there is none. A bad file raises ValueError naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"scale file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"scale file {path}: expected a JSON object, got {type(data).__name__}")
    wanted: dict[str, int] = {}
    for kind, count in data.items():
        if kind not in KINDS:
            raise ValueError(f"scale file {path}: unknown kind {kind!r}; expected one of {sorted(KINDS)}")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            raise ValueError(f"scale file {path}: {kind} is {count!r}; expected an integer 0..{MAX_COUNT}")
        wanted[kind] = count
    return wanted


def _index(name: str, prefix: str) -> int | None:
    m = re.fullmatch(re.escape(prefix) + r"(\d+)", name)
    return int(m.group(1)) if m else None


class Scaler:
    """Keeps as many children of each kind running as the scale file asks (run by `mlmesh up`).

    `specs[kind](index)` builds the spec of one child; kinds without a spec (e.g. serving in a
    training-only suite) are refused with a logged error."""

    def __init__(
        self, sup: Supervisor, specs: Mapping[str, Callable[[int], ServiceSpec]], path: Path
    ) -> None:
        self._sup = sup
        self._specs = specs
        self._path = path
        self._seen: float | None = None
        self.wanted: dict[str, int] = {}

    def poll(self) -> list[str]:
        """Re-read the file if it changed and reconcile; what was started or removed, as text."""
        try:
            mtime = self._path.stat().st_mtime
        except FileNotFoundError:
            return []
        if mtime == self._seen:
            return []
        self._seen = mtime
        try:
            self.wanted = read_wanted(self._path)
        except ValueError as e:
            log.error("scale file ignored", error=str(e))
            return [f"ignored: {e}"]
        done: list[str] = []
        for kind, count in sorted(self.wanted.items()):
            done += self._reconcile(kind, count)
        return done

    def _reconcile(self, kind: str, count: int) -> list[str]:
        build = self._specs.get(kind)
        if build is None:
            log.error("cannot scale", kind=kind, reason="this suite does not run it")
            return [f"cannot scale {kind}: this suite does not run it"]
        prefix = KINDS[kind]
        have = sorted(
            i
            for c in self._sup.children()
            if (i := _index(c.name, prefix)) is not None and c.state != "stopped"
        )
        done: list[str] = []
        for index in reversed(have[count:]):  # the surplus, newest first
            self._sup.remove(f"{prefix}{index}")
            done.append(f"removed {prefix}{index}")
        free = (i for i in range(MAX_COUNT) if i not in have)
        for _ in range(count - len(have)):
            index = next(free)
            try:
                self._sup.start(build(index))
            except SupervisorError as e:
                log.error("scale up failed", service=f"{prefix}{index}", error=str(e))
                done.append(f"failed to start {prefix}{index}: {e}")
                break
            done.append(f"started {prefix}{index}")
        return done


def running(suite: Mapping[str, Any], kind: str) -> list[str]:
    """Names of the running children of `kind` in a suite.json."""
    prefix = KINDS[kind]
    return [
        s["name"]
        for s in suite.get("services", [])
        if _index(s["name"], prefix) is not None and s.get("state") == "running"
    ]


def scale(
    kind: Annotated[str, typer.Argument(help=f"What to scale: {' or '.join(KINDS)}.")],
    count: Annotated[int, typer.Argument(min=0, max=MAX_COUNT, help="How many to keep running.")],
    root: Annotated[Path, typer.Option("--root", help="The running suite's root.")] = DEFAULT_ROOT,
    timeout: Annotated[float, typer.Option(min=1, help="Most seconds to wait for the count.")] = 300.0,
) -> None:
    """Start or stop serving replicas or trainer workers of a running `mlmesh up`."""
    if kind not in KINDS:
        fail(f"cannot scale {kind!r}: choose {' or '.join(KINDS)}", code=2)
    suite_file = root / SUITE_FILE
    if not suite_file.exists():
        fail(f"no running suite under {root} ({suite_file} is missing): start one with `mlmesh up`")
    path = root / SCALE_FILE
    try:
        wanted = read_wanted(path)
    except ValueError:
        wanted = {}  # a bad file is replaced whole
    wanted[kind] = count
    atomic_write_json(path, wanted)
    deadline = time.monotonic() + timeout
    with console.status(f"scaling {kind} to {count}") as status:
        while True:
            try:
                names = running(json.loads(suite_file.read_text()), kind)
            except (OSError, ValueError):
                names = None  # being rewritten, or the suite stopped meanwhile
            if names is not None and len(names) == count:
                break
            if not suite_file.exists():
                fail(f"the suite under {root} stopped while scaling")
            if time.monotonic() > deadline:
                have = len(names or [])
                fail(f"{kind}: {have} running, not {count}, after {timeout:.0f}s; see `mlmesh status`")
            status.update(f"scaling {kind} to {count}: {len(names or [])} running")
            time.sleep(0.2)
    console.print(f"{kind}: {count} running ({', '.join(names) or 'none'})")
