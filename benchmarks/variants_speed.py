"""Every variant's gate numbers and batch-1 pairs/s, plus torch eager fp32, in one run.

    .venv/bin/python -m benchmarks.variants_speed [--arch tinyclip-8m] [--threads 1,2] [--work DIR [--reuse]]

Builds a random TinyCLIP-8M-shaped checkpoint, converts it (onnx-fp32), adds every backend ×
precision with ``converters.variants.add_variants`` (failed variants kept, marked failed, so
they can be timed too), then times image and text towers at batch 1 through the runtime's
backends, each variant in a fresh process (only its runtime's thread pool alive), round-robin
``--rounds`` times keeping the best median (the host is shared). pairs/s = 1 / (image s +
text s), TinyCLIP's definition. Also times ORT's transformer-fused graphs
(``onnxruntime.transformers.optimizer``, model_type "clip"), measurement only.
Random weights: the gate numbers are plumbing checks, not accuracy claims
(``benchmarks/variants_gate_trained.py`` has them on a trained model).
Writes ``benchmarks/results/variants_speed.json`` (one block of rows per thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "variants_speed.json"


def _time(fn, iters: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _pair_rate(image_s: float, text_s: float) -> float:
    return 1.0 / (image_s + text_s)


def _inputs(manifest):
    from edgeclip.tokenizer import Tokenizer

    size = manifest["preprocess"]["image_size"]
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    ids = Tokenizer(context_length=manifest["tokenizer"]["context_length"])(
        ["a photo of a red square"]
    )
    return pixels, ids


def variant_timer(bundle: Path, variant: dict, pixels, ids, threads: int):
    """(image fn, text fn) running one variant's towers at batch 1 through its runtime backend."""
    from edgeclip.backends import get_backend
    from edgeclip.bundle import Tower
    from edgeclip.towers import TowerRunner

    backend = get_backend(variant["backend"])
    runners = {}
    for tower in ("image", "text"):
        t = Tower.from_dict(variant[tower])
        runners[tower] = TowerRunner(
            t, lambda rel: backend.open(bundle / rel, threads=threads), tower == "text"
        )
    return (lambda: runners["image"](pixels, 1)), (lambda: runners["text"](ids, 1))


def torch_timer(checkpoint: Path, pixels, ids, threads: int):
    """(image fn, text fn) for torch eager fp32 (the transformers model, inference mode)."""
    import torch

    from converters.checkpoints import load_checkpoint
    from converters.gate import torch_towers

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    image, text = torch_towers(model)
    px, t = torch.from_numpy(pixels), torch.from_numpy(ids)

    def run(module, x):
        with torch.inference_mode():
            return module(x)

    return (lambda: run(image, px)), (lambda: run(text, t))


def time_one(work: Path, key: str, threads: int, iters: int) -> dict[str, float]:
    """Median image and text seconds of one variant (or torch) in this process."""
    bundle = work / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    pixels, ids = _inputs(manifest)
    if key == "torch-eager-fp32":
        img_fn, txt_fn = torch_timer(work / "ckpt", pixels, ids, threads)
    else:
        extra = (
            json.loads((bundle / "timing_only.json").read_text())
            if (bundle / "timing_only.json").is_file()
            else []
        )
        variant = next(v for v in manifest["variants"] + extra if v["id"] == key)
        img_fn, txt_fn = variant_timer(bundle, variant, pixels, ids, threads)
    return {"image_s": _time(img_fn, iters), "text_s": _time(txt_fn, iters)}


def measure_all(
    work: Path, keys: list[str], threads: int, iters: int, rounds: int
) -> dict[str, dict]:
    """Each variant in a fresh process (only its runtime's thread pool alive, as in real use),
    round-robin ``rounds`` times on this shared host; each keeps its best median."""
    best = {k: [np.inf, np.inf] for k in keys}
    for r in range(rounds):
        for key in keys:
            cmd = [sys.executable, "-m", "benchmarks.variants_speed", "--time-one", key, "--work", str(work),
                   "--threads", str(threads), "--iters", str(iters)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"timing {key} failed:\n{proc.stderr[-2000:]}")
            t = json.loads(proc.stdout.strip().splitlines()[-1])
            best[key] = [min(best[key][0], t["image_s"]), min(best[key][1], t["text_s"])]
        print(f"round {r + 1}/{rounds} done", flush=True)
    return {
        k: {
            "image_ms": round(i * 1e3, 3),
            "text_ms": round(t * 1e3, 3),
            "pairs_per_s": round(_pair_rate(i, t), 2),
        }
        for k, (i, t) in best.items()
    }


def _rows(bundle: Path, variants: list[dict], timing: dict) -> dict:
    """Result rows (torch first) and the fastest variant that passed its gate."""
    rows = [
        {
            "id": "torch-eager-fp32",
            "backend": "torch",
            "precision": "fp32",
            **timing["torch-eager-fp32"],
        }
    ]
    for v in variants:
        size = sum(f.stat().st_size for f in (bundle / v["id"]).rglob("*") if f.is_file())
        rows.append({
            "id": v["id"], "backend": v["backend"], "precision": v["precision"], **timing[v["id"]],
            "dir_mb": round(size / 1e6, 2),
            "gate": (v.get("gate") or {}).get("passed", "not gated (timing only)"),
            "gate_reason": (v.get("gate") or {}).get("reason"),
            "config": (v.get("options") or {}).get("config"),
            "parity": {k: v.get("parity", {}).get(k) for k in (
                "image_cosine_mean", "text_cosine_mean", "top1_agreement", "top1_agreement_tie_tolerant")},
        })  # fmt: skip
        print(f"{v['id']}: {rows[-1]['pairs_per_s']} pairs/s (gate {rows[-1]['gate']})", flush=True)
    print(f"torch-eager-fp32: {rows[0]['pairs_per_s']} pairs/s", flush=True)
    gated = [r for r in rows[1:] if r["gate"] is True]
    best = max(gated, key=lambda r: r["pairs_per_s"]) if gated else None
    return {
        "rows": rows,
        "best_gated": best and {"id": best["id"], "pairs_per_s": best["pairs_per_s"],
                                "speedup_vs_torch": round(best["pairs_per_s"] / rows[0]["pairs_per_s"], 2)},
    }  # fmt: skip


def _cpu_flags() -> list[str]:
    """The SIMD features that decide INT8/bf16 speed (AVX2, AVX-512 VNNI, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    keys = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [k for k in keys if f" {k}" in text]


def fused_variants(bundle: Path, manifest: dict) -> list[dict]:
    """ORT transformer-optimizer fused copies of onnx-fp32 and of it INT8-dynamic (timing only)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    arch = manifest["architecture"]
    fp32 = next(v for v in manifest["variants"] if v["id"] == "onnx-fp32")
    out = []
    for vid, quant in (("onnx-fp32-fused", False), ("onnx-int8-fused", True)):
        (bundle / vid).mkdir(exist_ok=True)
        for tower, kind in (("image", "vision"), ("text", "text")):
            opt = optimizer.optimize_model(
                str(bundle / fp32[tower]["file"]), model_type="clip",
                num_heads=arch[f"{kind}_heads"], hidden_size=arch[f"{kind}_width"],
            )  # fmt: skip
            path = bundle / vid / f"{tower}.onnx"
            opt.save_model_to_file(str(path))
            if quant:
                quantize_dynamic(str(path), str(path), weight_type=QuantType.QInt8, per_channel=True,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
        v = json.loads(json.dumps(fp32))
        v["id"] = vid
        for tower in ("image", "text"):
            v[tower]["file"] = f"{vid}/{tower}.onnx"
        out.append(v)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tinyclip-8m")
    ap.add_argument("--threads", default="1,2", help="thread counts to time, e.g. 1,2")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", default="onnx,openvino,litert")
    ap.add_argument("--precisions", default="fp32,fp16,int8,int8-dynamic,int8-static,int8-weights")
    ap.add_argument("--work", default=None, help="keep the bundle here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="time the bundle already in --work")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--time-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_one:
        print(json.dumps(time_one(Path(args.work), args.time_one, int(args.threads), args.iters)))
        return {}

    from converters.add_variants import add_variants
    from converters.bundle_writer import convert
    from converters.fixtures import write_random_checkpoint

    work = Path(args.work or tempfile.mkdtemp(prefix="variants-speed-"))
    t0 = time.perf_counter()
    ckpt, bundle = work / "ckpt", work / "bundle"
    if args.reuse and (bundle / "manifest.json").is_file():
        manifest = json.loads((bundle / "manifest.json").read_text())
    else:
        ckpt = write_random_checkpoint(ckpt, arch=args.arch, fmt="hf", seed=0)
        bundle = convert(ckpt, bundle, name=args.arch, overwrite=True, progress=False)
        manifest = add_variants(
            bundle, ckpt, backends=args.backends, precisions=args.precisions, keep_failed=True,
            builder_options={"litert": {"batch_sizes": [1, 8]}},
        )  # fmt: skip
    build_s = time.perf_counter() - t0
    extra = fused_variants(bundle, manifest)
    (bundle / "timing_only.json").write_text(json.dumps(extra))
    variants = manifest["variants"] + extra
    keys = ["torch-eager-fp32"] + [v["id"] for v in variants]
    by_threads = {}
    for threads in [int(t) for t in str(args.threads).split(",")]:
        print(f"-- {threads} thread(s)", flush=True)
        timing = measure_all(work, keys, threads, args.iters, args.rounds)
        by_threads[str(threads)] = _rows(bundle, variants, timing)
    result = {
        "what": "batch-1 pairs/s per variant (random TinyCLIP-8M-shaped weights), one run",
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "cpu_flags": _cpu_flags(), "loadavg_at_end": os.getloadavg()},
        "arch": args.arch, "iters": args.iters, "rounds": args.rounds,
        "build_seconds": round(build_s, 1), "calibration": manifest.get("calibration"),
        "by_threads": by_threads,
        "rejected": manifest.get("rejected_variants", []),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({t: r["best_gated"] for t, r in by_threads.items()}))
    return result


if __name__ == "__main__":
    main()
