"""Distillation benchmark on the procedural task: each loss, inheritance modes, 3 seeds.

Every row distils the same student for the same number of steps from the cached procedural
teacher (``edgeclip distill --teacher procedural-teacher``), over ``--seeds``, and reports zero-shot
top-1 (64-way colour-shape prompts) on seen pairs, on held-out pairs (``--eval-held-out`` images
per pair, 200 by default) and the 8-way shape accuracy on held-out images, as mean ± half-range
over seeds, plus accuracy-vs-steps curves. Runs already done (their ``result.json`` under
``--work``) are reused, so a bounded invocation can be continued later.

    python -m benchmarks.distill_bench --steps 600 --seeds 0,1,2            # every row
    python -m benchmarks.distill_bench --rows no-kd,fd+icl+crd --seeds 0    # a subset

Writes ``distill_bench.json``, ``distill_bench.md`` and ``distill_bench.png`` to ``--out``
(default ``benchmarks/results/<host>/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KD = "fd=2000,icl=1,crd=1"
HALF = "procedural-student-half"  # 53 % fewer encoder-layer parameters than the teacher
HALF_SPARSITY = 0.533
# name: (losses, TrainConfig fields); the student is procedural-student unless a row says otherwise
ROWS: dict[str, tuple[str, dict]] = {
    "no-kd": ("clip=1", {}),
    "crd": ("crd=1", {}),
    "fd": ("fd=2000", {}),
    "mfd": ("mfd=2000", {}),
    "gd": (
        "gd=1500",
        {},
    ),  # paper formula; ≈ released gd=1e8 at these logit scales (docs/distill.md)
    "icl": ("icl=1", {}),
    "afd": ("afd=1", {}),
    "affinity@50": ("affinity=1", {"affinity_scale": 50.0}),
    "affinity@teacher": ("affinity=1", {"affinity_scale": "teacher"}),
    "fd+icl+crd": (KD, {}),
    "half: random init": (KD, {"student": HALF}),
    "half: manual inherit": (KD, {"student": HALF, "inherit": True}),
    "half: auto inherit": (KD, {"auto_inherit": True, "target_sparsity": HALF_SPARSITY}),
    "half: auto inherit, uniform": (
        KD, {"auto_inherit": True, "target_sparsity": HALF_SPARSITY, "prune_layout": "uniform"},
    ),
}


def host_slug() -> str:
    """The results folder of this machine (``benchmarks.hosts.host_label``)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.hosts import host_label

    return host_label()


def _run(name: str, seed: int, args, teacher: str, cache: dict) -> dict:
    """One row at one seed (reused from ``--work`` when already done)."""
    from edgeclip.distill.cli import cache_dir
    from edgeclip.distill.trainer import TrainConfig, train

    out = Path(args.work) / name.replace(" ", "").replace(":", "_").replace(",", "-") / f"seed{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    losses, extra = ROWS[name]
    kw = {"student": "procedural-student", **extra}
    if kw.get("auto_inherit"):
        kw.update(prune_step=args.steps // 2, mask_lr=args.mask_lr, lambda_lr=args.mask_lr)
    cfg = TrainConfig(
        teacher=teacher, losses=losses, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        seed=seed, out=str(out), eval_held_out=args.eval_held_out, eval_every=args.eval_every,
        progress=False, procedural_size=args.procedural_size,
        teacher_cache_dir=str(cache_dir() / "teacher-features"), **kw,
    )  # fmt: skip
    t = time.perf_counter()
    res = train(cfg, teacher_cache=cache)
    log = [json.loads(x) for x in open(out / "train_log.jsonl")]
    row = {
        "row": name, "seed": seed, "losses": losses, "steps": args.steps, "eval": res["eval"],
        "time_s": round(time.perf_counter() - t, 1),
        "curve": [{"step": r["step"], **r["eval"]} for r in log if "eval" in r],
        "params": _params(out, res),
    }  # fmt: skip
    done.write_text(json.dumps(row, indent=2))
    return row


def _params(out: Path, res: dict) -> dict:
    from edgeclip.distill.prune import param_counts
    from edgeclip.distill.students import load_model

    counts = param_counts(load_model(out))
    if "pruning" in res:
        counts["compact"] = res["pruning"]["params"]["compact"]
        counts["sparsity_compact"] = res["pruning"]["sparsity"]["layers_compact"]
    return counts


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and half-range over seeds of each row's final accuracies."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["row"], []).append(r)
    out = []
    for name, rs in by.items():
        s = {"row": name, "losses": rs[0]["losses"], "seeds": [r["seed"] for r in rs],
             "params_layers": rs[0]["params"]["layers"], "time_s": sum(r["time_s"] for r in rs) / len(rs)}  # fmt: skip
        for k in ("seen", "held_out", "held_out_shape"):
            v = [r["eval"][k] for r in rs]
            s[k] = {"mean": sum(v) / len(v), "half_range": (max(v) - min(v)) / 2}
        out.append(s)
    return out


def markdown(summary: list[dict], teacher: dict, args) -> str:
    lines = [
        f"Procedural task, {args.steps} student steps × batch {args.batch_size}, seeds {args.seeds}; "
        f"zero-shot top-1 %, mean ± half-range; {args.eval_held_out} images per held-out pair.",
        "",
        f"Teacher: seen {teacher['seen']:.1f}, held-out {teacher['held_out']:.1f}, "
        f"held-out shape {teacher['held_out_shape']:.1f}.",
        "",
        "| row | losses | seen 64-way | held-out 64-way | held-out shape (8) | layer params | s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        cells = " | ".join(
            f"{s[k]['mean']:.1f} ± {s[k]['half_range']:.1f}"
            for k in ("seen", "held_out", "held_out_shape")
        )
        lines.append(
            f"| {s['row']} | `{s['losses']}` | {cells} | {s['params_layers']:,} | {s['time_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Seen and held-out accuracy against steps, one line per row (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(dict.fromkeys(r["row"] for r in rows))
    for name in names:
        curves = [r["curve"] for r in rows if r["row"] == name and r["curve"]]
        if not curves:
            continue
        steps = [p["step"] for p in curves[0]]
        for ax, key in zip(axes, ("seen", "held_out")):
            ys = [sum(c[i][key] for c in curves) / len(curves) for i in range(len(steps))]
            ax.plot(steps, ys, marker="o", label=name)
    for ax, title in zip(axes, ("seen pairs (64-way)", "held-out pairs (64-way)")):
        ax.set(title=title, xlabel="student step", ylabel="top-1 %")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _args(argv):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", default=",".join(ROWS), help="comma list of: " + ", ".join(ROWS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--mask-lr", type=float, default=0.1, help="auto-inherit mask and λ learning rate"
    )
    ap.add_argument("--procedural-size", type=int, default=120_000)
    ap.add_argument("--eval-held-out", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=0, help="default: steps // 4 (the curves)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is faster on a shared 2-core box)"
    )
    ap.add_argument("--work", default=str(ROOT / "runs" / "distill_bench"))
    ap.add_argument("--out", help="results folder (default benchmarks/results/<host>)")
    args = ap.parse_args(argv)
    args.eval_every = args.eval_every or max(1, args.steps // 4)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        print(f"unknown rows {unknown}; known: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from edgeclip.distill.cli import resolve_teacher
    from edgeclip.distill.evaluate import zero_shot
    from edgeclip.distill.procedural import eval_set
    from edgeclip.distill.students import load_model

    teacher = resolve_teacher("procedural-teacher")
    tm = load_model(teacher).eval()
    t_eval = zero_shot(
        tm, eval_set(args.eval_held_out, 20, image_size=tm.config.vision_config.image_size)
    )
    cache: dict = {}  # teacher embeddings shared by every run: a KD step costs a plain step
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            rows.append(_run(name, seed, args, teacher, cache))
            r = rows[-1]
            print(f"{name} seed {seed}: seen {r['eval']['seen']:.1f} held-out {r['eval']['held_out']:.1f} "
                  f"shape {r['eval']['held_out_shape']:.1f} ({r['time_s']:.0f} s)", flush=True)  # fmt: skip
    summary = summarise(rows)
    out = Path(args.out or ROOT / "benchmarks" / "results" / host_slug())
    out.mkdir(parents=True, exist_ok=True)
    from benchmarks.device import device_report

    report = {"device": device_report(), "teacher": {"dir": teacher, "eval": t_eval},
              "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
              "summary": summary, "runs": rows}  # fmt: skip
    (out / "distill_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "distill_bench.md").write_text(markdown(summary, t_eval, args))
    plot(rows, out / "distill_bench.png")
    print(markdown(summary, t_eval, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
