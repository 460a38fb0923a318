"""The main job, end to end with no network: teacher → distilled student → bundle → zero-shot.

    bash scripts/main_job.sh [--steps N] [--out DIR] [--inherit] [--skip-baseline] [--skip-teacher-check]

1. trains (once, then reused from the cache) the procedural teacher, and computes (once, on
   disk) its embeddings of every training item, so a KD step costs what a plain step costs;
2. distils ``procedural-student`` from it with ``fd=2000,icl=1,crd=1`` into ``OUT/student`` and,
   for an honest measure of what distillation adds, trains the same student with the same
   steps, seed and start (random init, or ``--inherit``) without the teacher into
   ``OUT/student-no-kd``; prints the difference (one seed: ``benchmarks/distill_bench.py`` has 3);
3. converts the distilled student into the bundle ``OUT/bundle`` and adds gated int8 variants;
4. writes the held-out test images (colour-shape pairs never seen in training) as PNG files
   under ``OUT/heldout/<colour>_<shape>/NNN.png`` and classifies them with ``edgeclip.load``;
5. times pairs/s at batch 1 of the auto-selected variant and of onnx-fp32 with
   ``edgeclip.timing`` (what ``backend="auto"`` and ``edgeclip bench`` use);
6. prints a summary and writes ``benchmarks/results/main_job.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # converters/ lives next to edgeclip/, not in the package
LOSSES = "fd=2000,icl=1,crd=1"


def _log(msg: str) -> None:
    print(f"[main_job] {msg}", flush=True)


def _pairs_per_s(bundle, variant) -> dict:
    """Batch-1 pairs/s of one variant, measured the way ``backend="auto"`` and ``edgeclip bench``
    measure it (``edgeclip.timing``: towers timed separately on preprocessed inputs)."""
    from edgeclip.timing import Settings, sample_inputs, tower_pairs_per_s
    from edgeclip.towers import open_towers

    ctx = int(bundle.tokenizer.get("context_length", 77))
    pixels, ids = sample_inputs(1, int(bundle.preprocess["image_size"]), ctx)
    image, text = open_towers(bundle.root, variant)
    r = tower_pairs_per_s(image, text, pixels, ids, 1, Settings())
    return {k: round(v, 1) for k, v in r.items()}


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


def student_image_size(student_dir: Path) -> int:
    """Image size of a distilled student, from the provenance the distill stage writes."""
    meta = json.loads((Path(student_dir) / "edgeclip_distill.json").read_text())
    return int(meta["config"]["student_arch"]["image_size"])


def _pct(d: dict | None) -> dict | None:
    return None if d is None else {k: round(float(v), 1) for k, v in d.items()}


def _args(argv):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=600, help="student steps, KD and no-KD alike")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--inherit", action="store_true", help="both students start from the teacher's slices"
    )
    ap.add_argument("--skip-baseline", action="store_true", help="no no-KD student (no comparison)")
    ap.add_argument("--per-pair", type=int, default=20, help="held-out PNGs per held-out pair")
    ap.add_argument("--out", default="runs")
    ap.add_argument(
        "--skip-teacher-check", action="store_true", help="do not re-evaluate the teacher"
    )
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "main_job.json"))
    return ap.parse_args(argv)


def _warm_teacher_cache(teacher: str) -> int:
    from edgeclip.distill import cli
    from edgeclip.distill.students import load_arch
    from edgeclip.distill.teacher_cache import warm_procedural

    arch = load_arch("procedural-student")
    return warm_procedural(teacher, cli.cache_dir() / "teacher-features", cli.TEACHER_DATA_SIZE,
                           arch["image_size"], arch["context_length"])  # fmt: skip


def _teacher(args, times: dict) -> tuple[str, dict]:
    from edgeclip.distill import cli

    cached = (cli.procedural_teacher_dir() / "edgeclip_distill.json").is_file()
    t = time.perf_counter()
    teacher = cli.resolve_teacher(cli.PROCEDURAL_TEACHER)
    times["teacher_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()  # its embeddings of every training item, once: KD steps cost plain ones
    computed = _warm_teacher_cache(teacher)
    times["teacher_cache_s"] = round(time.perf_counter() - t, 1)
    _log(f"teacher embeddings: {computed} of {cli.TEACHER_DATA_SIZE} training items computed "
         f"({times['teacher_cache_s']} s; 0 when cached)")  # fmt: skip
    meta = json.loads((Path(teacher) / "edgeclip_distill.json").read_text())
    info = {"dir": teacher, "train_s": round(meta.get("result", {}).get("elapsed_s", 0.0), 1),
            "eval": _pct(meta.get("result", {}).get("eval")), "was_cached": cached}  # fmt: skip
    if not args.skip_teacher_check:
        from edgeclip.distill.evaluate import zero_shot
        from edgeclip.distill.students import load_model

        info["eval"] = _pct(zero_shot(load_model(teacher), None))
    _log(f"teacher {teacher}: {info['eval']}")
    return teacher, info


def _student(args, out: Path, losses: str, times: dict, key: str) -> dict | None:
    """Train one student (``losses`` with the teacher, or ``clip=1`` alone) into ``out``."""
    from edgeclip.distill import cli

    _log(f"training {out} ({losses}, {args.steps} steps x {args.batch_size})")
    t = time.perf_counter()
    argv = ["distill", "--teacher", cli.PROCEDURAL_TEACHER, "--losses", losses, "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup", "0.1", "--out", str(out),
            "--teacher-cache", str(cli.cache_dir() / "teacher-features"),
            "--procedural-size", str(cli.TEACHER_DATA_SIZE)]  # fmt: skip
    if args.inherit:
        argv.append("--inherit")
    rc = cli.main(argv)
    times[key] = round(time.perf_counter() - t, 1)
    if rc != 0:
        _log(f"training {out} failed (exit {rc})")
        return None
    meta = json.loads((out / "edgeclip_distill.json").read_text())
    return {
        "dir": str(out),
        "inherit": args.inherit,
        "eval": _pct(meta.get("result", {}).get("eval")),
    }


def _bundle(student: Path, out: Path, per_pair: int, times: dict):
    """Convert, add gated int8 variants, classify the held-out PNGs with ``edgeclip.load``."""
    import edgeclip
    from converters.add_variants import add_variants
    from converters.bundle_writer import convert

    t = time.perf_counter()
    bundle = out / "bundle"
    convert(student, bundle, overwrite=True)
    backends = "onnx,openvino" if importlib.util.find_spec("openvino") else "onnx"
    add_variants(bundle, student, backends=backends, precisions="int8", log=print)
    times["convert_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    paths, labels = _write_heldout(out / "heldout", per_pair, student_image_size(student))
    model = edgeclip.load(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(v for v in manifest["variants"] if v["id"] == model.variant.id)
    variant = {"id": model.variant.id, "reason": getattr(model, "selection_reason", None),
               "gate": entry.get("gate"), "parity": entry.get("parity")}  # fmt: skip
    evaluation = _bundle_eval(model, paths, labels)
    times["bundle_eval_s"] = round(time.perf_counter() - t, 1)
    return model, bundle, paths, variant, evaluation


def _speed(model, bundle: Path, times: dict) -> dict:
    import edgeclip

    t = time.perf_counter()
    speed = {model.variant.id: _pairs_per_s(model.bundle, model.variant)}
    if model.variant.id != "onnx-fp32":
        fp32 = edgeclip.load(bundle, backend="onnx", precision="fp32")
        speed["onnx-fp32"] = _pairs_per_s(fp32.bundle, fp32.variant)
    times["speed_s"] = round(time.perf_counter() - t, 1)
    return speed


def kd_effect(kd: dict, no_kd: dict) -> dict:
    """Distillation's effect at equal steps, seed and start: KD minus no-KD, in points."""
    return {k: round(kd[k] - no_kd[k], 1) for k in ("seen", "held_out", "held_out_shape")}


def _print_summary(summary: dict, speed: dict, json_path: str) -> None:
    nan = float("nan")
    start = "inherited" if summary["inherit"] else "random init"
    print("\n== main job summary ==")
    print("zero-shot top-1 % (64-way colour-shape prompts; shape-only 8-way; colour from 64-way)")
    print("| model | seen | held-out | held-out shape | held-out colour |")
    print("|---|---|---|---|---|")
    rows = [("teacher (torch)", summary["teacher"]["eval"] or {}),
            (f"student, {start} + KD (torch)", summary["student"]["eval"] or {})]  # fmt: skip
    if "student_no_kd" in summary:
        rows.append((f"student, {start}, no KD (torch)", summary["student_no_kd"]["eval"] or {}))
    for name, e in rows:
        print(f"| {name} | {e.get('seen', nan):.1f} | {e.get('held_out', nan):.1f} | "
              f"{e.get('held_out_shape', nan):.1f} | {e.get('held_out_colour_right', nan):.1f} |")  # fmt: skip
    be = summary["bundle_eval"]
    print(f"| student bundle {summary['variant']['id']} ({be['n_images']} PNGs) | - | {be['held_out']:.1f} "
          f"| {be['held_out_shape']:.1f} | {be['held_out_colour_right']:.1f} |")  # fmt: skip
    if "kd_effect" in summary:
        d = summary["kd_effect"]
        print(f"distillation's effect ({summary['steps']} steps each, same seed and start, one seed): "
              f"seen {d['seen']:+.1f}, held-out {d['held_out']:+.1f}, held-out shape {d['held_out_shape']:+.1f} "
              "points (3 seeds: python -m benchmarks.distill_bench)")  # fmt: skip
    print(f"variant {summary['variant']['id']}: gate {summary['variant']['gate']}")
    for vid, s in speed.items():
        print(
            f"{vid}: {s['pairs_per_s']} pairs/s at batch 1 (images {s['images_per_s']}/s, texts {s['texts_per_s']}/s; edgeclip.timing)"
        )
    print(f"times: {summary['times']}")
    print(f"wrote {json_path}")


def _host() -> dict:
    """The CPU and thread count the times were measured on (every number names its CPU)."""
    from edgeclip.verify import cpu_identity, widest_isa

    ident = cpu_identity()
    return {"cpu": ident["cpu"], "isa": widest_isa(ident["isa"]), "cores": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import torch

    torch.set_num_threads(2)  # the 2-core box this job is sized for
    started = time.perf_counter()
    out, times = Path(args.out), {}
    summary: dict = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "losses": LOSSES,
        "inherit": args.inherit,
    }
    _, summary["teacher"] = _teacher(args, times)
    summary["student"] = _student(args, out / "student", LOSSES, times, "distill_s")
    if summary["student"] is None:
        return 1
    if not args.skip_baseline:
        base = _student(args, out / "student-no-kd", "clip=1", times, "no_kd_s")
        if base is not None:
            summary["student_no_kd"] = base
            summary["kd_effect"] = kd_effect(summary["student"]["eval"], base["eval"])
    model, bundle, _, summary["variant"], summary["bundle_eval"] = _bundle(
        Path(summary["student"]["dir"]), out, args.per_pair, times
    )
    speed = _speed(model, bundle, times)
    summary["speed_batch1"], summary["times"] = speed, times
    times["total_s"] = round(time.perf_counter() - started, 1)
    summary["host"] = _host()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, speed, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
