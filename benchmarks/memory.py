"""Peak memory and cold start of one variant, each in a fresh Python process.

The parent starts ``python -m benchmarks.memory CHILD_JSON``; the child times its own imports,
the load (bundle open with sha256 verification, both graphs opened) and the first result (one
image and one text embedded), then prints one JSON line with those times and its peak RSS
(``VmHWM`` from /proc/self/status on Linux, ``ru_maxrss`` elsewhere). The parent also records
the process's wall time, which adds the interpreter's own start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_MARK = "EDGECLIP_BENCH_CHILD "


def peak_rss_mib() -> float | None:
    """This process's peak resident set size in MiB (2^20 bytes, as /proc counts it in KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (
            ru / 2**20 if sys.platform == "darwin" else ru / 1024
        )  # bytes on macOS, KiB elsewhere
    except (ImportError, OSError):
        return None


def _child_variant(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    import numpy as np

    from benchmarks.e2e import open_model
    from edgeclip.bundle import Bundle

    t_import = time.perf_counter()
    bundle = Bundle.open(spec["bundle"], verify=True)
    variant = next(v for v in bundle.variants if v.id == spec["variant"])
    model = open_model(bundle, variant, spec.get("threads"), spec.get("device", "cpu"))
    t_load = time.perf_counter()
    size = int((bundle.preprocess or {}).get("image_size", 224))
    image = np.random.default_rng(0).integers(0, 255, (size + 32, size + 48, 3), dtype=np.uint8)
    img = model.encode_image([image])
    txt = model.encode_text(["a photo of a cat."])
    t_first = time.perf_counter()
    assert img.shape[0] == 1 and txt.shape[0] == 1
    return {
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "first_result_s": t_first - t_load,
        "cold_start_s": t_first - t0,
    }


def _child_torch(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    import numpy as np
    import torch

    from benchmarks.variants import load_torch

    t_import = time.perf_counter()
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    model = load_torch(Path(spec["checkpoint"]))
    t_load = time.perf_counter()
    size = int(spec.get("image_size", 224))
    x = torch.as_tensor(
        np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    )
    from edgeclip.tokenizer import EOT_ID, SOT_ID

    ids = torch.zeros((1, 77), dtype=torch.long)
    ids[0, 0], ids[0, 1] = SOT_ID, EOT_ID
    with torch.inference_mode():
        model.get_image_features(pixel_values=x)
        model.get_text_features(input_ids=ids)
    t_first = time.perf_counter()
    return {
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "first_result_s": t_first - t_load,
        "cold_start_s": t_first - t0,
    }


def measure_process(spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Run one fresh child for ``spec`` (``kind`` 'variant' or 'torch'); its numbers or an error."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=root,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"child exited {proc.returncode}: {' | '.join(tail)}"}
    out = json.loads(line[len(_MARK) :])
    out["process_wall_s"] = wall
    return out


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m benchmarks.memory '{"kind": ..., ...}'``."""
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    result = _child_torch(spec) if spec.get("kind") == "torch" else _child_variant(spec)
    result["peak_rss_mib"] = peak_rss_mib()
    print(_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
