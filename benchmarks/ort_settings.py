"""Which ONNX Runtime settings pay on this host: thread spinning and the transformer fusions.

    python -m benchmarks.ort_settings BUNDLE [--threads 2]

For each ONNX variant, through edgeclip's own backend, each ``EDGECLIP_ORT_SPINNING`` mode:
each tower alone at batch 1, image-then-text pairs as ``classify`` runs them, and image calls
50 ms apart (wall and CPU per call). Spinning that goes on after a run (``1``) speeds a tight
loop of one tower, but the two towers' pools then spin against each other and a trickle of
calls burns CPU in the gaps; ``run`` stops it when each run ends. Then, for the fp32 variant,
``onnxruntime.transformers.optimizer`` (model_type ``clip``: Attention, SkipLayerNorm, BiasGelu
fusions) against the graph as ONNX Runtime optimises it itself, with the cosine between the
two. Medians of interleaved calls. Writes ``benchmarks/results/<host>/ort_settings.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from .hosts import measured_on, write_result


def _inputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    from edgeclip.tokenizer import tokenize

    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    return pixels, tokenize(["a photo of a cat."]).astype(np.int64)


def _median_ms(fn, n: int = 40, warmup: int = 5) -> float:
    from edgeclip.timing import time_calls

    return round(float(np.median(time_calls(fn, warmup=warmup, repeats=n))) * 1000, 2)


MODES = ("run", "1", "0")  # EDGECLIP_ORT_SPINNING: stop after each run / keep spinning / never


def _spaced(image, pixels, calls: int = 20, gap_s: float = 0.05) -> dict:
    """Image calls 50 ms apart, as a camera or a trickle of requests sends them: wall ms per
    call, and the process's CPU ms per call (spinning threads burn CPU in the gaps)."""
    import time

    walls, cpu0 = [], time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        image(pixels, 1)
        walls.append(time.perf_counter() - start)
        time.sleep(gap_s)
    return {"spaced_wall_ms": round(float(np.median(walls)) * 1000, 2),
            "spaced_cpu_ms": round((time.process_time() - cpu0) / calls * 1000, 2)}  # fmt: skip


def _one_mode(bundle, variant, threads: int, pixels, ids) -> dict:
    from edgeclip.towers import open_towers

    image, text = open_towers(bundle.root, variant, threads, "cpu")
    image(pixels, 1), text(ids, 1)  # open both sessions first
    return {
        "image_ms": _median_ms(lambda: image(pixels, 1)),
        "text_ms": _median_ms(lambda: text(ids, 1), n=100),
        "image_then_text_ms": _median_ms(lambda: (image(pixels, 1), text(ids, 1))),
        **_spaced(image, pixels),
    }


def spinning(bundle, variant, threads: int, pixels, ids, rounds: int = 3) -> dict:
    """Each mode ``rounds`` times, interleaved (this VM's speed drifts within minutes); each
    figure is the median over the rounds."""
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            os.environ["EDGECLIP_ORT_SPINNING"] = mode
            runs[mode].append(_one_mode(bundle, variant, threads, pixels, ids))
    os.environ.pop("EDGECLIP_ORT_SPINNING", None)
    return {f"spinning={m}": {k: round(float(np.median([r[k] for r in rs])), 2) for k in rs[0]}
            for m, rs in runs.items()}  # fmt: skip


def _dynamic_int8(src: Path, dest: Path) -> Path:
    """``src`` through ONNX Runtime's dynamic INT8 as the ``dynamic-per-tensor`` candidate,
    with the fused ``Attention`` op quantized too (it becomes ``QAttention``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The fused graph's contrib ops defeat shape inference; their outputs are float.
    quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8, per_channel=False,
                     reduce_range=True, op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                     extra_options={"DefaultTensorType": 1})  # fmt: skip
    return dest


def fusions(graph: Path, threads: int, feed: np.ndarray, heads: int, width: int,
            int8: bool = False) -> dict:  # fmt: skip
    """ms a call of ``graph`` as ONNX Runtime optimises it alone and with the
    ``onnxruntime.transformers`` fusions; ``int8``: both then dynamically quantized."""
    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    fused_model = optimizer.optimize_model(str(graph), model_type="clip", num_heads=heads,
                                           hidden_size=width, opt_level=1)  # fmt: skip
    stats = {k: v for k, v in fused_model.get_fused_operator_statistics().items() if v}
    with tempfile.TemporaryDirectory() as tmp:
        plain_path, fused = graph, Path(tmp) / "fused.onnx"
        fused_model.save_model_to_file(str(fused))
        if int8:
            plain_path = _dynamic_int8(graph, Path(tmp) / "plain-int8.onnx")
            fused = _dynamic_int8(fused, Path(tmp) / "fused-int8.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.log_severity_level = threads, 3
        plain, fast = (ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                       for p in (plain_path, fused))  # fmt: skip
        name = plain.get_inputs()[0].name
        a, b = plain.run(None, {name: feed})[0], fast.run(None, {name: feed})[0]
        cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
        ms = {"ort_only_ms": [], "fused_ms": []}
        for _ in range(4):  # interleaved rounds
            ms["ort_only_ms"].append(_median_ms(lambda: plain.run(None, {name: feed}), n=10))
            ms["fused_ms"].append(_median_ms(lambda: fast.run(None, {name: feed}), n=10))
    return {"fused_ops": stats, "cosine": round(cos, 7),
            **{k: round(float(np.median(v)), 2) for k, v in ms.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from edgeclip.bundle import Bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    bundle = Bundle.open(args.bundle)
    arch = bundle.manifest.get("architecture") or {}
    pixels, ids = _inputs(int(bundle.preprocess.get("image_size", 224)))
    onnx = [v for v in bundle.variants if v.backend == "onnx"]
    result = {**measured_on(), "threads": args.threads,
              "spinning": {v.id: spinning(bundle, v, args.threads, pixels, ids) for v in onnx}}  # fmt: skip
    fp32 = next((v for v in onnx if v.precision == "fp32"), None)
    if fp32 is not None:
        result["fusions"] = {
            "image": fusions(bundle.path_of(fp32.image.file), args.threads, pixels,
                             int(arch.get("vision_heads", 4)), int(arch.get("vision_width", 256))),
            "text": fusions(bundle.path_of(fp32.text.file), args.threads, ids,
                            int(arch.get("text_heads", 4)), int(arch.get("text_width", 256))),
            "image-int8": fusions(bundle.path_of(fp32.image.file), args.threads, pixels,
                                  int(arch.get("vision_heads", 4)), int(arch.get("vision_width", 256)),
                                  int8=True),
        }  # fmt: skip
    write_result("ort_settings", result, markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# ONNX Runtime settings, {r['cpu']} ({r['isa']}), {r['threads']} threads", "",
             "`EDGECLIP_ORT_SPINNING`: `run` spins within a run and stops when it ends, `1` keeps "
             "spinning, `0` never spins. Batch 1; medians of 3 interleaved rounds. Spaced: image "
             "calls 50 ms apart, wall and process CPU per call.", "",
             "| variant | spinning | image ms | text ms | image then text ms | spaced wall ms "
             "| spaced CPU ms |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for vid, modes in r["spinning"].items():
        for mode, m in modes.items():
            cells = [m.get(k, "–") for k in ("image_ms", "text_ms", "image_then_text_ms",
                                              "spaced_wall_ms", "spaced_cpu_ms")]  # fmt: skip
            lines.append(f"| {vid} | {mode.split('=')[1]} | " + " | ".join(map(str, cells)) + " |")
    for tower, f in (r.get("fusions") or {}).items():
        kind = "dynamic-per-tensor INT8 of each" if tower.endswith("int8") else "fp32"
        lines += ["", f"Fusions ({tower.split('-')[0]} tower, {kind}): ORT alone {f['ort_only_ms']} ms, with "
                  f"`onnxruntime.transformers` fusions {f['fused_ms']} ms, cosine {f['cosine']} "
                  f"({', '.join(f'{k} {v}' for k, v in f['fused_ops'].items())})."]  # fmt: skip
    lines += ["", f"Load average at start: {', '.join(f'{x:.2f}' for x in r['load_average'])}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
