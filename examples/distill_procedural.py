"""Distillation benchmark on procedural data (a script, not a timed test).

Trains (or reuses) the procedural teacher, then distils the ``procedural-student`` with each
loss setting for the same steps and seed, and prints zero-shot top-1 on the held-out
colour-shape compositions (64-way among all colour-shape prompts), the seen ones, and the
8-way shape accuracy on held-out images. All runs share one cache of teacher embeddings.

    python examples/distill_procedural.py --steps 150 --runs no-kd,fd+icl+crd,inherit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RUNS = {
    # name: (losses, extra TrainConfig fields)
    "no-kd": ("clip=1", {}),
    "fd+icl+crd": ("fd=2000,icl=1,crd=1", {}),
    "crd": ("crd=1", {}),
    "fd": ("fd=2000", {}),
    "mfd": ("mfd=2000", {}),
    "gd": ("gd=10000", {}),
    "icl": ("icl=1", {}),
    "afd": ("afd=1", {}),
    "affinity@50": ("affinity=1", {"affinity_scale": 50.0}),
    "affinity@teacher": ("affinity=1", {"affinity_scale": "teacher"}),
    "inherit+no-kd": ("clip=1", {"inherit": True}),
    "inherit+fd+icl+crd": ("fd=2000,icl=1,crd=1", {"inherit": True}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--teacher", default="procedural-teacher", help="CLIPModel folder or procedural-teacher"
    )
    ap.add_argument("--student", default="procedural-student")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-held-out", type=int, default=200, help="test images per held-out pair")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {', '.join(RUNS)}")
    ap.add_argument("-o", "--out", default="distill_bench")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from edgeclip.distill.cli import resolve_teacher
    from edgeclip.distill.evaluate import zero_shot
    from edgeclip.distill.procedural import eval_set
    from edgeclip.distill.students import load_model
    from edgeclip.distill.trainer import TrainConfig, train

    names = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in names if r not in RUNS]
    if unknown:
        print(f"unknown runs {unknown}; known: {', '.join(RUNS)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    teacher = resolve_teacher(args.teacher)
    teacher_s = time.perf_counter() - t0
    tm = load_model(teacher).eval()
    ev = eval_set(args.eval_held_out, 20, image_size=tm.config.vision_config.image_size)
    meta = Path(teacher) / "edgeclip_distill.json"
    if meta.is_file():  # a reused teacher: report the time its training took
        teacher_s = json.loads(meta.read_text()).get("result", {}).get("elapsed_s", teacher_s)
    rows = [{"run": "teacher", **zero_shot(tm, ev), "time_s": teacher_s}]
    print(json.dumps(rows[-1]), flush=True)
    cache: dict = {}
    for name in names:
        losses, extra = RUNS[name]
        cfg = TrainConfig(
            student=args.student, teacher=teacher, losses=losses, steps=args.steps, batch_size=args.batch_size,
            lr=args.lr, seed=args.seed, out=str(Path(args.out) / name), eval_held_out=args.eval_held_out,
            progress=False, **extra,
        )  # fmt: skip
        t = time.perf_counter()
        res = train(cfg, teacher_cache=cache)
        rows.append(
            {"run": name, "losses": losses, **res["eval"], "time_s": time.perf_counter() - t}
        )
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.steps} steps x batch {args.batch_size}, seed {args.seed}; zero-shot top-1 %\n")
    print(
        "| run | held-out 64-way | seen 64-way | held-out shape (8) | held-out colour right | time s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['held_out']:.1f} | {r['seen']:.1f} | {r['held_out_shape']:.1f} "
            f"| {r['held_out_colour_right']:.1f} | {r['time_s']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
