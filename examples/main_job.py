"""The main job, end to end with no network: teacher → distilled student → bundle → zero-shot.

    bash scripts/main_job.sh [--steps N] [--out DIR] [--skip-teacher-check] [--no-kd-baseline]

1. trains (once, then reused from the cache) the procedural teacher;
2. distils ``procedural-student`` from it with ``fd=2000,icl=1,crd=1`` into ``OUT/student``;
3. converts it into the bundle ``OUT/bundle`` and adds gated int8 variants (onnx, openvino);
4. writes the held-out test images (colour-shape pairs never seen in training) as PNG files
   under ``OUT/heldout/<colour>_<shape>/NNN.png`` and classifies them with ``edgeclip.load``;
5. times pairs/s at batch 1 of the auto-selected variant and of onnx-fp32;
6. prints a summary and writes ``benchmarks/results/main_job.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # converters/ lives next to edgeclip/, not in the package
LOSSES = "fd=2000,icl=1,crd=1"


def _log(msg: str) -> None:
    print(f"[main_job] {msg}", flush=True)


def _pairs_per_s(model, image, text: str, warm: int = 3, n: int = 20) -> dict:
    """Batch-1 throughput: image and text timed separately, one pair = one image + one text."""

    def rate(fn) -> float:
        for _ in range(warm):
            fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return n / (time.perf_counter() - t)

    img_s = rate(lambda: model.encode_image(image))
    txt_s = rate(lambda: model.encode_text(text))
    return {
        "image_per_s": round(img_s, 1),
        "text_per_s": round(txt_s, 1),
        "pairs_per_s": round(1.0 / (1.0 / img_s + 1.0 / txt_s), 1),
    }


def _write_heldout(out: Path, n_per_pair: int, image_size: int) -> tuple[list[Path], list[int]]:
    """The held-out evaluation images as PNG files; returns paths and 64-way labels."""
    import numpy as np
    from PIL import Image

    from edgeclip.distill.procedural import class_prompts, eval_set

    ev = eval_set(n_per_pair, 0, image_size=image_size)
    _, pairs = class_prompts()
    counters: dict[int, int] = {}
    paths, labels = [], []
    for img, label, ho in zip(ev["images"], ev["label"], ev["held_out"]):
        if not ho:
            continue
        colour, shape = pairs[int(label)]
        k = counters.get(int(label), 0)
        counters[int(label)] = k + 1
        path = out / f"{colour}_{shape}" / f"{k:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img)).save(path)
        paths.append(path)
        labels.append(int(label))
    return paths, labels


def _bundle_eval(model, paths: list[Path], labels: list[int]) -> dict:
    """64-way top-1, 8-way shape-only and colour-only (from the 64-way guess) accuracies in %."""
    import numpy as np

    from edgeclip.distill.procedural import SHAPES, class_prompts

    prompts, _ = class_prompts()
    img = model.encode_image([str(p) for p in paths])
    y = np.asarray(labels)
    pred = (img @ model.encode_text(prompts).T).argmax(1)
    shape_emb = model.encode_text([f"a photo of a {s}" for s in SHAPES])
    pred_shape = (img @ shape_emb.T).argmax(1)
    n = len(SHAPES)
    return {
        "held_out": round(float(100 * np.mean(pred == y)), 1),
        "held_out_shape": round(float(100 * np.mean(pred_shape == y % n)), 1),
        "held_out_colour_right": round(float(100 * np.mean(pred // n == y // n)), 1),
        "n_images": len(paths),
    }


def _pct(d: dict | None) -> dict | None:
    return None if d is None else {k: round(float(v), 1) for k, v in d.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=1500, help="student distillation steps (~3 min)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-inherit", action="store_true", help="student from random init")
    ap.add_argument("--per-pair", type=int, default=20, help="held-out PNGs per held-out pair")
    ap.add_argument("--out", default="runs")
    ap.add_argument(
        "--skip-teacher-check", action="store_true", help="do not re-evaluate the teacher"
    )
    ap.add_argument(
        "--no-kd-baseline",
        action="store_true",
        help="also train the student without a teacher (clip loss only) for comparison",
    )
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "main_job.json"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)  # the 2-core box this job is sized for
    import edgeclip
    from edgeclip.distill import cli
    from edgeclip.distill.procedural import class_prompts

    out = Path(args.out)
    times: dict[str, float] = {}
    summary: dict = {"steps": args.steps, "batch_size": args.batch_size, "losses": LOSSES}

    t = time.perf_counter()
    teacher = cli.resolve_teacher(cli.PROCEDURAL_TEACHER)
    times["teacher_s"] = round(time.perf_counter() - t, 1)
    meta = json.loads((Path(teacher) / "edgeclip_distill.json").read_text())
    summary["teacher"] = {
        "dir": teacher,
        "train_s": round(meta.get("result", {}).get("elapsed_s", 0.0), 1),
        "eval": _pct(meta.get("result", {}).get("eval")),
    }
    if not args.skip_teacher_check:
        from edgeclip.distill.evaluate import zero_shot
        from edgeclip.distill.students import load_model

        tm = load_model(teacher)
        summary["teacher"]["eval"] = _pct(zero_shot(tm, None))
    _log(f"teacher {teacher}: {summary['teacher']['eval']}")

    t = time.perf_counter()
    student = out / "student"
    argv_d = ["distill", "--teacher", cli.PROCEDURAL_TEACHER, "--losses", LOSSES,
              "--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--lr", str(args.lr), "--warmup", "0.1", "--out", str(student)]  # fmt: skip
    if not args.no_inherit:
        argv_d.append("--inherit")
    rc = cli.main(argv_d)
    if rc != 0:
        _log(f"distillation failed (exit {rc})")
        return rc
    times["distill_s"] = round(time.perf_counter() - t, 1)
    smeta = json.loads((student / "edgeclip_distill.json").read_text())
    summary["student"] = {
        "dir": str(student),
        "inherit": not args.no_inherit,
        "eval": _pct(smeta.get("result", {}).get("eval")),
    }

    if args.no_kd_baseline:
        t = time.perf_counter()
        base = out / "student-no-kd"
        argv_b = [a if a != LOSSES else "clip=1" for a in argv_d]
        argv_b[argv_b.index(str(student))] = str(base)
        if cli.main(argv_b) == 0:
            bmeta = json.loads((base / "edgeclip_distill.json").read_text())
            summary["student_no_kd"] = {
                "dir": str(base),
                "inherit": not args.no_inherit,
                "eval": _pct(bmeta.get("result", {}).get("eval")),
            }
        times["no_kd_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    from converters.add_variants import add_variants
    from converters.bundle_writer import convert

    bundle = out / "bundle"
    convert(student, bundle, overwrite=True)
    backends = "onnx,openvino" if importlib.util.find_spec("openvino") else "onnx"
    add_variants(bundle, student, backends=backends, precisions="int8", log=print)
    times["convert_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    image_size = smeta["config"].get("arch", {}).get("image_size", 64)
    paths, labels = _write_heldout(out / "heldout", args.per_pair, image_size)
    model = edgeclip.load(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(v for v in manifest["variants"] if v["id"] == model.variant.id)
    summary["variant"] = {
        "id": model.variant.id,
        "reason": getattr(model, "selection_reason", None),
        "gate": entry.get("gate"),
        "parity": entry.get("parity"),
    }
    summary["bundle_eval"] = _bundle_eval(model, paths, labels)
    times["bundle_eval_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    import numpy as np
    from PIL import Image

    prompt = class_prompts()[0][0]
    image = np.asarray(Image.open(paths[0]).convert("RGB"))  # decoded once: time the model only
    speed = {model.variant.id: _pairs_per_s(model, image, prompt)}
    if model.variant.id != "onnx-fp32":
        fp32 = edgeclip.load(bundle, backend="onnx", precision="fp32")
        speed["onnx-fp32"] = _pairs_per_s(fp32, image, prompt)
    summary["speed_batch1"] = speed
    times["speed_s"] = round(time.perf_counter() - t, 1)
    summary["times"] = times

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    te, se, be = (
        summary["teacher"]["eval"] or {},
        summary["student"]["eval"] or {},
        summary["bundle_eval"],
    )
    print("\n== main job summary ==")
    print("zero-shot top-1 % (64-way colour-shape prompts; shape-only 8-way; colour from 64-way)")
    print("| model | seen | held-out | held-out shape | held-out colour |")
    print("|---|---|---|---|---|")
    rows = [("teacher (torch)", te), ("student (torch)", se)]
    if "student_no_kd" in summary:
        rows.append(("student no-KD (torch)", summary["student_no_kd"]["eval"] or {}))
    for name, e in rows:
        print(f"| {name} | {e.get('seen', float('nan')):.1f} | {e.get('held_out', float('nan')):.1f} "
              f"| {e.get('held_out_shape', float('nan')):.1f} | {e.get('held_out_colour_right', float('nan')):.1f} |")  # fmt: skip
    print(f"| student bundle {model.variant.id} ({be['n_images']} PNGs) | - | {be['held_out']:.1f} "
          f"| {be['held_out_shape']:.1f} | {be['held_out_colour_right']:.1f} |")  # fmt: skip
    print(f"variant {model.variant.id}: gate {entry.get('gate')}")
    for vid, s in speed.items():
        print(f"{vid}: {s['pairs_per_s']} pairs/s at batch 1 (image {s['image_per_s']}/s, text {s['text_per_s']}/s)")  # fmt: skip
    print(f"times: {times}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
