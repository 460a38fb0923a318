"""How fast can a 12 MP JPEG become a 1/8-scale image on this CPU, against what the 90 % target needs?

    .venv/bin/python -m benchmarks.jpeg_decoders [--reps 7]

Times, per photo of ``benchmarks.index_data`` (12 MP, q92): Pillow's full decode, Pillow's
draft (DCT-domain 1/8 scale, what ``edgeclip index`` does) and libjpeg-turbo's own 1/8 decode
through ``simplejpeg`` (fast DCT and upsampling). At 1/8 scale the IDCT is one coefficient a
block, so what is left is entropy decoding, which every decoder does over the whole file;
``compressed_mb_per_s`` is that rate. From this host's ``index_bench.json`` (model core-ms per
image) it derives the decode budget that 90 % end-to-end would allow, and the entropy-decoding
rate that budget needs. Writes ``benchmarks/results/<host>/jpeg_decoders.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks import index_data
from benchmarks.hosts import host_label, measured_on, write_result
from edgeclip.versions import package_version

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.9


def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.process_time()  # core time: what the model loses to the decoder
        fn()
        times.append(time.process_time() - start)
    return round(statistics.median(times) * 1e3, 2)


def decoders(data: bytes) -> dict[str, Callable[[], Any]]:
    """name -> a call that decodes ``data`` that way; simplejpeg only where installed."""
    w, h = Image.open(io.BytesIO(data)).size

    def pillow(draft: bool) -> None:
        im = Image.open(io.BytesIO(data))
        if draft:
            im.draft("RGB", (w // 8, h // 8))
        im.load()

    calls = {"pillow_full": lambda: pillow(False), "pillow_draft_1_8": lambda: pillow(True)}
    try:
        import simplejpeg
    except ImportError:
        return calls
    calls["simplejpeg_1_8"] = lambda: simplejpeg.decode_jpeg(
        data, min_width=w // 8, min_height=h // 8, fastdct=True, fastupsample=True
    )
    return calls


def budget(path: Path, mean_kb: float) -> list[dict[str, Any]]:
    """Per variant of an ``index_bench.json``: decode core-ms that 90 % allows, the rate it needs."""
    if not path.exists():
        return []
    out = []
    bench = json.loads(path.read_text())
    for row in bench.get("e2e", []):
        model_ms = row.get("core_ms_per_image", {}).get("model_only")
        if not model_ms:
            continue
        allowed = model_ms * (1 / TARGET - 1)  # M / (M + D) >= 0.9  <=>  D <= M / 9
        out.append({
            "variant": row["variant"], "model_core_ms": model_ms, "measured": bench.get("date"),
            "decode_core_ms_allowed": round(allowed, 2),
            "mb_per_s_needed": round(mean_kb / 1024 / (allowed / 1e3), 1),
        })
    return out


def run(reps: int) -> dict[str, Any]:
    photos = []
    for name in index_data.PHOTOS:
        data = index_data.camera_jpeg(name)
        ms = {k: _median_ms(fn, reps) for k, fn in decoders(data).items()}
        kb = len(data) / 1024
        rate = {k: round(kb / 1024 / (v / 1e3), 1) for k, v in ms.items() if k != "pillow_full"}
        photos.append({"photo": name, "kb": round(kb), "core_ms": ms, "compressed_mb_per_s": rate})
    mean_kb = statistics.fmean(p["kb"] for p in photos)
    return {
        "host": host_label(), **measured_on(), "date": time.strftime("%Y-%m-%d"), "reps": reps,
        "versions": {"pillow": Image.__version__, "simplejpeg": package_version("simplejpeg")},
        "photos": photos, "target": TARGET, "budget": budget(RESULTS / host_label() / "index_bench.json", mean_kb),
    }


def to_markdown(res: dict[str, Any]) -> str:
    names = list(res["photos"][0]["core_ms"])
    lines = [
        f"# JPEG decode floor ({res['host']})", "",
        f"CPU: {res['cpu']} ({res['isa']}), load average {res['load_average'][0]:.2f} at start; {res['date']}; Pillow {res['versions']['pillow']}, "
        f"simplejpeg {res['versions']['simplejpeg'] or 'not installed'}; core-ms, median of {res['reps']}.",
        "", "| photo | KB | " + " | ".join(f"{n} ms" for n in names) + " | 1/8 MB/s |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for p in res["photos"]:
        best = max(p["compressed_mb_per_s"].values())
        lines.append(f"| {p['photo']} | {p['kb']} | " + " | ".join(str(p["core_ms"][n]) for n in names) + f" | {best} |")
    if res["budget"]:
        lines += ["", f"What {res['target']:.0%} end-to-end allows: decode core-ms <= model core-ms / 9 "
                  "(model core-ms from this host's index_bench.json, measured on the date shown):", "",
                  "| variant | model core-ms | measured | decode core-ms allowed | entropy decoding needed MB/s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {b['variant']} | {b['model_core_ms']} | {b['measured']} | {b['decode_core_ms_allowed']} | {b['mb_per_s_needed']} |"
                  for b in res["budget"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    res = run(args.reps)
    write_result("jpeg_decoders", res, to_markdown(res))
    return res


if __name__ == "__main__":
    main()
