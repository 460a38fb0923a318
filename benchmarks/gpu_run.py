"""One prepared GPU measurement, sized for a short lease (< 8 minutes on a datacenter GPU).

    bash benchmarks/gpu_run.sh            # on the GPU machine
    python -m benchmarks.gpu_run --quick  # the same code on a CPU box: notes say what is missing

Builds the TinyCLIP-8M-shaped random-weight fixture (onnx fp32 + fp16), then measures with
TinyCLIP's protocol (10 warm-up + 50 timed calls, towers separately, pairs/s =
1/(1/img + 1/txt)) at batch 1, 32 and 256: torch eager fp32 and AMP fp16, and ONNX Runtime CUDA
and TensorRT through the runtime's own towers where those providers load. Every row is labelled
with the provider that really ran it. Writes ``results.json`` / ``results.md`` and a
``device.json`` (nvidia-smi, versions) into ``--out``; before that, the on-device check of each
ORT GPU variant (``edgeclip.verify``), so a TensorRT fp16 engine that misses the gate is shown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

ANCHOR = 4150.0  # TinyCLIP ViT-8M/16 published pairs/s (AMP, batch 32)


def _nvidia_smi() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None


def _gpu_checks(bundle) -> list[dict]:
    """The on-device gate of the ORT variants on each GPU provider that is listed here."""
    from edgeclip.selection import verify_all
    from edgeclip.verify import summarise

    from .gpu import cuda_status

    rows = []
    for provider in cuda_status()["ort_providers"]:
        device = "tensorrt" if provider.startswith("Tensorrt") else "cuda"
        try:
            statuses = [st for st in verify_all(bundle, None, device) if st.variant.backend == "onnx"]
            rows += [{**r, "device": device} for r in summarise(statuses)]
        except Exception as exc:  # noqa: BLE001 - a provider that cannot load is a row
            rows.append({"device": device, "state": f"error: {exc}"[:300]})
    return rows


def main(argv: list[str] | None = None) -> int:
    from converters.bundle_writer import convert
    from converters.fixtures import write_random_checkpoint
    from edgeclip.bundle import Bundle

    from . import report
    from . import variants as V
    from .device import device_report, short_name
    from .gpu import run_gpu
    from .throughput import Settings, sample_inputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    ap.add_argument("--batch-sizes", default="1,32,256")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: the micro model, few calls, tiny batches")  # fmt: skip
    args = ap.parse_args(argv)
    sizes = [1, 2] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    settings = Settings.quick() if args.quick else Settings.gpu()
    with tempfile.TemporaryDirectory() as work:
        arch = "micro" if args.quick else "tinyclip-8m"  # quick: the mechanics, not the numbers
        ckpt = write_random_checkpoint(Path(work) / "ckpt", arch=arch, fmt="hf", seed=0)
        bundle = Bundle.open(convert(ckpt, Path(work) / "b", precisions="fp32,fp16",
                                     progress=False, log=print))  # fmt: skip
        model = V.load_torch(ckpt)
        pixels, ids = sample_inputs(max(sizes), int(bundle.preprocess["image_size"]))
        rows, notes = [], []
        for b in sizes:
            got, more = run_gpu(bundle, bundle.variants, model, pixels, ids, b, settings)
            rows += got
            notes += [n for n in more if n not in notes]
        checks = _gpu_checks(bundle)
    dev = {**device_report(), "nvidia_smi": _nvidia_smi()}
    results = {"schema": report.SCHEMA, "model": {"name": "tinyclip-8m-shaped (random weights)"},
               "device": dev, "device_label": short_name(dev), "settings": settings.as_dict(),
               "baseline": None, "macs": None, "throughput": rows, "memory": [], "e2e": [],
               "accuracy": None, "notes": notes + [f"TinyCLIP's published anchor: {ANCHOR:,.0f} "
                                                   "pairs/s (AMP, batch 32)"],
               "gpu_checks": checks, "interrupted": False}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_all(results, args.out)
    (args.out / "device.json").write_text(json.dumps(dev, indent=1) + "\n")
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
