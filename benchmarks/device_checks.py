"""The on-device check of every variant of a bundle on this host: numbers, time, batch invariance.

    python -m benchmarks.device_checks [--bundle DIR] [--precisions fp32,fp16,int8,...]

Without ``--bundle`` it builds the TinyCLIP-8M-shaped random-weight fixture with ONNX Runtime and
OpenVINO variants (speed and cost depend on the shape, not the weights; the gate numbers are
those of random weights and say nothing about a trained model). Each variant is checked in a
fresh cache, so the time is the first-use cost; a second pass shows the cached cost. Writes
``benchmarks/results/<host>/device_checks.{json,md}``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from .hosts import host_label, measured_on, write_result


def build_fixture(work: Path, backends: str, precisions: str, int8_configs: str | None = None) -> Path:
    """The TinyCLIP-8M-shaped random-weight bundle; ``int8_configs`` pins INT8 configurations
    (``converters.int8_pins``), e.g. those a trained model's gate kept on this host: each is
    tried first, and where random weights fail it the search goes on, so the fixture still
    has that backend's int8 variant (for cold start and memory; its speed then does not count)."""
    from converters.bundle_writer import convert
    from converters.fixtures import write_random_checkpoint

    ckpt = write_random_checkpoint(work / "ckpt", arch="tinyclip-8m", fmt="hf", seed=0)
    return convert(ckpt, work / "tinyclip-8m", backends=backends, precisions=precisions,
                   progress=False, log=print, int8_configs=int8_configs,
                   int8_fallback=True)  # fmt: skip


def measure(bundle_dir: Path) -> dict:
    import os

    from edgeclip.bundle import Bundle
    from edgeclip.selection import verify_all
    from edgeclip.verify import summarise

    with tempfile.TemporaryDirectory() as home:
        os.environ["EDGECLIP_HOME"] = home
        bundle = Bundle.open(bundle_dir)
        t0 = time.perf_counter()
        first = summarise(verify_all(bundle, threads=2))
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = summarise(verify_all(bundle, threads=2))
        cached_s = time.perf_counter() - t0
    return {
        "what": "edgeclip verify on the TinyCLIP-8M-shaped random-weight fixture, 2 threads",
        "host": host_label(), **measured_on(),
        "probe": bundle.manifest["probe"]["n_images"],
        "variants": first,
        "all_first_use_s": round(first_s, 2),
        "all_cached_s": round(cached_s, 3),
        "cached": all(r["cached"] for r in second if r["state"] != "unverified"),
    }  # fmt: skip


def markdown(result: dict) -> str:
    lines = [f"# On-device check, {result['cpu']} ({result['isa']}), {result['host']}", "",
             result["what"] + f"; probe of {result['probe']} images.", "",
             "| variant | on this host | image cos | text cos | top-1 agree | batch drift | "
             "batch-invariant | check s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["variants"]:
        def f(v, d=5):
            return "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

        lines.append(f"| {r['variant']} | {r['state']} | {f(r['image_cosine_mean'])} | "
                     f"{f(r['text_cosine_mean'])} | {f(r['top1_agreement'], 3)} | "
                     f"{f(r['batch_drift'], 7)} | {f(r['batch_invariant'])} | {f(r['seconds'], 2)} |")  # fmt: skip
    lines += ["", f"All variants, first use: {result['all_first_use_s']} s (sessions built and "
              f"probes run); again from the cache: {result['all_cached_s']} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--backends", default="onnx,openvino")
    ap.add_argument("--precisions", default="fp32,fp16,int8,int8-dynamic,int8-static,int8-weights")
    ap.add_argument("--work", type=Path, default=None, help="keep the built fixture here")
    ap.add_argument("--int8-config", default=None, help="pin INT8 configs: BACKEND=CONFIG[,...]")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        bundle = args.bundle or (work / "tinyclip-8m" if (work / "tinyclip-8m").is_dir()
                                 else build_fixture(work, args.backends, args.precisions,
                                                    args.int8_config))  # fmt: skip
        result = measure(bundle)
    write_result("device_checks", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
