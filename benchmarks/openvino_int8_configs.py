"""How fast is each OpenVINO INT8 configuration on this CPU? The measured basis of the order of
``converters.openvino_variants.INT8_CANDIDATES`` (fastest first).

    .venv/bin/python -m benchmarks.openvino_int8_configs BUNDLE [--rounds 7] [--batch-sizes 1,32]

Builds every candidate the search may keep, plus the full-PTQ configurations it no longer tries
(``RETIRED``), from the bundle's onnx-fp32 graphs with the synthetic calibration set, then times
each one's image tower through edgeclip's own OpenVINO session (``edgeclip.timing``), the configs
interleaved round by round, in a rotating order, so that a slow spell of a shared VM hits them
all alike. Only the image tower is timed: every configuration gives the text tower the same int8
weights.
Writes ``benchmarks/results/<host>/openvino_int8_configs.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.hosts import cpu_ticks, measured_on, steal_share, write_result
from converters import openvino_variants as ovv

#: Configurations the search tried before 2026-12-03, timed for comparison: they quantize the
#: patch embedding and the final projections as well (about 2 % of the image tower's MACs).
RETIRED: list[tuple[str, dict[str, Any]]] = [
    ("ptq-transformer", {"ignore": (), "ptq_towers": ovv.IMAGE_ONLY}),
    ("ptq-transformer-keep-projections", {"ignore": ovv.PROJECTIONS, "ptq_towers": ovv.IMAGE_ONLY}),
]


def configs() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, builder, options) of every configuration timed: the search's, then the retired ones."""
    return [*ovv.INT8_CANDIDATES, *((n, "build_int8_ptq", o) for n, o in RETIRED)]


def build_all(bundle: Path, work: Path, log=print) -> dict[str, Path]:
    """Each configuration's image IR, built under ``work`` from ``bundle``'s onnx-fp32 graphs."""
    from converters.calibration import load_calibration

    manifest = json.loads((bundle / "manifest.json").read_text())
    fp32 = next(v for v in manifest["variants"] if v["id"] == "onnx-fp32")
    shutil.copytree(bundle / "onnx-fp32", work / "onnx-fp32", dirs_exist_ok=True)
    calibration = load_calibration(None, manifest.get("preprocess") or {}, log=lambda *_: None)
    images = {}
    for name, builder, options in configs():
        variant = getattr(ovv, builder)(work, fp32, None, calibration, {**options, "id": name})
        images[name] = work / variant["image"]["file"]
        log(f"built {name}")
    return images


def time_configs(images: dict[str, Path], batch_sizes: list[int], rounds: int, threads: int,
                 image_size: int = 224) -> dict[str, dict[str, Any]]:  # fmt: skip
    """name -> batch -> images/s, the median over ``rounds`` interleaved rounds, with the range."""
    from edgeclip.backends.openvino import Backend
    from edgeclip.timing import Settings, rate, time_calls

    backend, settings = Backend(), Settings()
    sessions = {n: backend.open(p, threads=threads, precision="int8") for n, p in images.items()}
    name_in = {n: s.input_names[0] for n, s in sessions.items()}
    pixels = np.random.default_rng(0).standard_normal((max(batch_sizes), 3, image_size, image_size),
                                                      dtype=np.float32)  # fmt: skip
    rates: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batch_sizes} for n in sessions}
    names = list(sessions)
    for round_no in range(rounds):
        shift = round_no % len(names)  # no config always goes first
        turn = names[shift:] + names[:shift]
        for batch in batch_sizes:
            for name in turn:
                session = sessions[name]
                feeds = {name_in[name]: pixels[:batch]}
                times = time_calls(lambda: session.run(feeds), warmup=settings.warmup,  # noqa: B023
                                   repeats=settings.repeats, min_time=settings.min_time)  # fmt: skip
                rates[name][batch].append(rate(times, batch))
    return {
        name: {str(b): {"images_per_s": round(statistics.median(r), 1),
                        "range": [round(min(r), 1), round(max(r), 1)]} for b, r in per.items()}
        for name, per in rates.items()
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    sizes = result["batch_sizes"]
    head = " | ".join(f"b{b} images/s (range)" for b in sizes)
    lines = [
        f"# OpenVINO INT8 configurations, {result['cpu']} ({result['isa']}), {result['threads']} threads",
        "",
        "Image tower only, median of interleaved rounds. `searched`: the position in the INT8 search"
        " (– : retired, timed for comparison).",
        "",
        f"| config | searched | {head} |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for row in result["configs"]:
        cells = [f"{row['speed'][str(b)]['images_per_s']} ({row['speed'][str(b)]['range'][0]}–"
                 f"{row['speed'][str(b)]['range'][1]})" for b in sizes]  # fmt: skip
        lines.append(
            f"| `{row['config']}` | {row['search_position'] or '–'} | {' | '.join(cells)} |"
        )
    lines += ["", f"{result['rounds']} rounds. Load average at start: "
              f"{', '.join(f'{x:.2f}' for x in result['load_average'])}. "
              + (f"CPU steal during the runs: {result['steal']:.0%}." if result["steal"] is not None
                 else "CPU steal: not readable here."), ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as work:
        os.environ["EDGECLIP_HOME"] = work  # OpenVINO's model cache of throwaway graphs stays here
        images = build_all(args.bundle, Path(work))
        head, ticks = measured_on(), cpu_ticks()
        speed = time_configs(images, sizes, args.rounds, args.threads)
    order = [name for name, _, _ in ovv.INT8_CANDIDATES]
    rows = [{"config": n, "search_position": order.index(n) + 1 if n in order else None,
             "speed": s} for n, s in speed.items()]  # fmt: skip
    result = {**head, "threads": args.threads, "rounds": args.rounds, "batch_sizes": sizes,
              "steal": steal_share(ticks), "configs": rows}  # fmt: skip
    write_result("openvino_int8_configs", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
