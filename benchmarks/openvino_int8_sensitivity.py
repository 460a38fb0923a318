"""Which part of the image tower costs OpenVINO PTQ its accuracy on this CPU?

    .venv/bin/python -m benchmarks.variants_gate_trained --work /tmp/vgt   # the trained model
    .venv/bin/python -m benchmarks.openvino_int8_sensitivity /tmp/vgt [--n-eval 480]

Takes the CLIP that ``variants_gate_trained`` trained and converted (``WORK/ckpt``,
``WORK/bundle``), and gates NNCF PTQ of the image tower with ``FLOAT_EMBEDDINGS`` in float plus,
one row at a time, one more group of layers in float (or one NNCF setting changed), on more
held-out images than the conversion gate uses (480 against 96), so a 1 % difference is 5
images, not a fraction of one. This is the measurement behind ``ptq-float-attention-output``.
Writes ``benchmarks/results/<host>/openvino_int8_sensitivity.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from benchmarks.hosts import measured_on, write_result
from converters import openvino_variants as ovv

#: row → (extra name patterns kept in float, NNCF keyword arguments, OpenVINO dynamic-quant group)
ROWS: dict[str, tuple[tuple[str, ...], dict[str, Any], str]] = {
    "ptq-float-patch-embedding (the base)": ((), {}, "256"),
    "+ q_proj, k_proj float": ((".*(q|k)_proj.*",), {}, "256"),
    "+ v_proj float": ((".*v_proj.*",), {}, "256"),
    "+ attention scores float": ((".*ScaledDotProduct.*", ".*self_attn/(Mat|Soft).*"), {}, "256"),
    "+ out_proj float (ptq-float-attention-output)": ((".*self_attn/out_proj.*",), {}, "256"),
    "+ layer 0 float": ((r".*layers\.0/.*",), {}, "256"),
    "full bias correction": ((), {"fast_bias_correction": False}, "256"),
    "dynamic quantization off (group 0)": ((), {}, "0"),
    "ptq-mlp-only": ((".*self_attn.*",), {}, "256"),
}


def measure(work: Path, n_calib: int, n_eval: int, threads: int) -> list[dict[str, Any]]:
    from converters.add_variants import _reference_model
    from converters.calibration import load_calibration
    from converters.gate import evaluate, reference_embeddings

    bundle = work / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    fp32 = next(v for v in manifest["variants"] if v["id"] == "onnx-fp32")
    model = _reference_model(work / "ckpt")
    data = load_calibration(None, manifest["preprocess"], 77, n_calib=n_calib, n_eval=n_eval,
                            log=lambda *_: None)  # fmt: skip
    ref = reference_embeddings(data, model)
    rows = []
    try:
        for name, (extra, nncf_kwargs, group) in ROWS.items():
            os.environ["EDGECLIP_OV_DYNAMIC_QUANT"] = group
            opts = {"ignore": [*ovv.FLOAT_EMBEDDINGS, *extra], "ptq_towers": ["image"],
                    "nncf": nncf_kwargs, "id": "openvino-int8-sensitivity", "precision": "int8"}  # fmt: skip
            built = ovv.build_int8_ptq(bundle, fp32, model, data, opts)
            parity = evaluate(bundle, built, data, ref, threads=threads)["parity"]
            rows.append({"row": name, **{k: parity.get(k) for k in (
                "image_cosine_mean", "image_cosine_min", "top1_agreement",
                "top1_agreement_tie_tolerant", "n_images")}})  # fmt: skip
            print(rows[-1], flush=True)
    finally:
        os.environ.pop("EDGECLIP_OV_DYNAMIC_QUANT", None)
    return rows


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# OpenVINO INT8: what costs accuracy, {r['cpu']} ({r['isa']})", "",
             f"NNCF PTQ of the image tower of the CLIP trained by `variants_gate_trained` "
             f"(`{r['model']}`), calibrated on {r['n_calib']} images, gated on {r['n_eval']} "
             "held-out images against torch fp32; the text tower has int8 weights.", "",
             "| configuration | image cos mean | image cos min | top-1 agreement | tie-tolerant |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in r["rows"]:
        lines.append(f"| {row['row']} | {row['image_cosine_mean']:.5f} | {row['image_cosine_min']:.5f} "
                     f"| {row['top1_agreement']:.2%} | {row['top1_agreement_tie_tolerant']:.2%} |")  # fmt: skip
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, help="the --work folder of a variants_gate_trained run")
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=480)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="folder (default: this host's results)")
    args = ap.parse_args(argv)
    trained = json.loads((args.work / "bundle" / "manifest.json").read_text())
    rows = measure(args.work, args.n_calib, args.n_eval, args.threads)
    result = {**measured_on(), "n_calib": args.n_calib, "n_eval": args.n_eval,
              "model": trained.get("name"), "rows": rows}  # fmt: skip
    write_result("openvino_int8_sensitivity", result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
