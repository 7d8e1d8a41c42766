"""Generate the Python stubs (with .pyi) from protos/ into common/mlmesh/.

    python scripts/gen_protos.py          # regenerate in place
    python scripts/gen_protos.py --check  # exit 1 if the checked-in stubs are stale

The generated modules are never edited by hand.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

import google.api  # googleapis-common-protos: google/api/*.proto
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "common"
GENERATED_DIRS = ("mlmesh/types", "mlmesh/ingest", "mlmesh/paramserver", "mlmesh/trainer", "mlmesh/serving")


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    googleapis = str(Path(google.api.__file__).resolve().parent.parent.parent)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for d in GENERATED_DIRS:
        for pkg in [out / d, *(p for p in (out / d).rglob("*") if p.is_dir())]:
            (pkg / "__init__.py").touch()


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for d in GENERATED_DIRS
        for p in (root / d).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    if not args.check:
        for d in GENERATED_DIRS:
            shutil.rmtree(OUT_ROOT / d, ignore_errors=True)
        generate(OUT_ROOT)
        print(f"generated stubs under {OUT_ROOT / 'mlmesh'}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, current = _tree(Path(tmp)), _tree(OUT_ROOT)
        stale = sorted(
            name
            for name in fresh.keys() | current.keys()
            if name not in fresh
            or name not in current
            or not filecmp.cmp(fresh[name], current[name], shallow=False)
        )
    if stale:
        print("generated stubs are stale; run: python scripts/gen_protos.py", file=sys.stderr)
        for name in stale:
            print(f"  {name}", file=sys.stderr)
        return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
