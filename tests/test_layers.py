"""Layers point down: every runtime module imports with the upper stages (converters, benchmarks,
edgeclip.distill) and torch/transformers made unimportable, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ["converters", "benchmarks", "edgeclip.distill", "torch", "transformers"]

SCRIPT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    BLOCKED = json.loads(sys.argv[1])

    class Block:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import edgeclip

    imported, optional, layering = [], {}, {}
    for info in pkgutil.walk_packages(edgeclip.__path__, "edgeclip."):
        if info.name.startswith("edgeclip.distill") or info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except ModuleNotFoundError as exc:
            bucket = layering if "(blocked)" in str(exc) else optional
            bucket[info.name] = str(exc)
    leaked = sorted(n for n in sys.modules if any(n == b or n.startswith(b + ".") for b in BLOCKED))
    print(json.dumps({"imported": imported, "optional": optional, "layering": layering,
                      "leaked": leaked}))
    """
)


def test_runtime_imports_no_upper_stage():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(BLOCKED)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["layering"] == {}, out["layering"]
    assert out["leaked"] == []
    # the core of the runtime is there whatever extras are installed
    for name in ("edgeclip.loader", "edgeclip.model", "edgeclip.verify", "edgeclip.gate",
                 "edgeclip.selection", "edgeclip.cli", "edgeclip.backends.onnxruntime"):  # fmt: skip
        assert name in out["imported"], out["optional"].get(name)


def test_source_has_no_upward_import_statement():
    """The same rule read from the source: no import statement names an upper stage."""
    import re

    pattern = re.compile(r"^\s*(from|import)\s+(converters|benchmarks|edgeclip\.distill)\b", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "edgeclip").rglob("*.py")
        if "distill" not in p.parts and pattern.search(p.read_text())
    ]
    assert offenders == []
