"""Distillation benchmark on the procedural task: each loss, inheritance modes, 3 seeds.

Every row distils the same student for the same number of steps from the cached procedural
teacher (``edgeclip distill --teacher procedural-teacher``), over ``--seeds``, and reports zero-shot
top-1 (64-way colour-shape prompts) on seen pairs, on held-out pairs (``--eval-held-out`` images
per pair, 200 by default) and the 8-way shape accuracy on held-out images, as mean ± half-range
over seeds, plus accuracy-vs-steps curves. Runs already done (their ``result.json`` under
``--work``) are reused, so a bounded invocation can be continued later.

    python -m benchmarks.distill_bench --steps 600 --seeds 0,1,2 --warm-cache   # every row
    python -m benchmarks.distill_bench --rows no-kd,fd+icl+crd --seeds 0        # a subset
    python -m benchmarks.distill_bench ... --no-report      # run only (e.g. rows split over 2 processes)
    python -m benchmarks.distill_bench ... --name distill_bench_600 --doc docs/distill.md

A finished run is reused only when its steps, batch size and learning rate match. The committed
results (docs/distill.md) are at 300 steps × batch 96 for every row and 600 × 96 for the
KD-vs-no-KD pair, on a 2-core CPU with 1 thread per run.

Writes ``NAME.json``, ``NAME.md`` and ``NAME.png`` (``--name``, default ``distill_bench``) to
``--out`` (default ``benchmarks/results/<host>/``), with the issue's targets judged in both.
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
    "half: auto inherit (uniform)": (
        KD, {"auto_inherit": True, "target_sparsity": HALF_SPARSITY, "prune_layout": "uniform"},
    ),
}


def needs_teacher(name: str) -> bool:
    """Whether a row reads the teacher (losses, or weights to inherit); ``no-kd`` does not."""
    losses, extra = ROWS[name]
    kd = [x for x in losses.split(",") if not x.startswith("clip=")]
    return bool(kd or extra.get("inherit") or extra.get("auto_inherit"))


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
    if done.is_file():  # reused only when it was run with these settings
        row = json.loads(done.read_text())
        if (row["steps"], row.get("batch_size"), row.get("lr")) == (args.steps, args.batch_size, args.lr):
            return row
    losses, extra = ROWS[name]
    kw = {"student": "procedural-student", **extra}
    if kw.get("auto_inherit"):
        kw.update(prune_step=args.steps // 2, mask_lr=args.mask_lr, lambda_lr=args.mask_lr)
    cfg = TrainConfig(
        teacher=teacher if needs_teacher(name) else None, losses=losses, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        seed=seed, out=str(out), eval_held_out=args.eval_held_out, eval_every=args.eval_every,
        progress=False, procedural_size=args.procedural_size,
        teacher_cache_dir=str(cache_dir() / "teacher-features"), **kw,
    )  # fmt: skip
    t = time.perf_counter()
    res = train(cfg, teacher_cache=cache)
    log = [json.loads(x) for x in open(out / "train_log.jsonl")]
    row = {
        "row": name, "seed": seed, "losses": losses, "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr, "eval": res["eval"],
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
    if "pruning" in res:  # the exported folder is zero padded: the compact counts are the size
        p = res["pruning"]
        counts["compact"] = p["params"]["compact"]
        counts["layers_compact"] = sum(p[t]["layer_params_compact"] for t in ("vision", "text"))
        counts["sparsity_compact"] = p["sparsity"]["layers_compact"]
    return counts


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and half-range over seeds of each row's final accuracies."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["row"], []).append(r)
    out = []
    for name, rs in by.items():
        s = {"row": name, "losses": rs[0]["losses"], "seeds": [r["seed"] for r in rs],
             "params_layers": rs[0]["params"].get("layers_compact", rs[0]["params"]["layers"]),
             "time_s": sum(r["time_s"] for r in rs) / len(rs)}  # fmt: skip
        for k in ("seen", "held_out", "held_out_shape"):
            v = [r["eval"][k] for r in rs]
            s[k] = {"mean": sum(v) / len(v), "half_range": (max(v) - min(v)) / 2}
        out.append(s)
    return out


SCRATCH = [n for n in ROWS if n != "no-kd" and not n.startswith("half")]  # KD, same student


def _delta(a: dict, b: dict, key: str) -> float:
    return a[key]["mean"] - b[key]["mean"]


def _verdict(target: str, measured: str, gap: float) -> dict:
    """``gap``: the margin over the target, in points (< 0: missed by that much)."""
    return {"target": target, "measured": measured, "met": gap >= 0, "gap": round(gap, 1)}


def targets(summary: list[dict], teacher: dict | None, steps: int, teacher_steps: int) -> list[dict]:
    """Issue #10's targets, each as measured here (means over the seeds)."""
    by = {s["row"]: s for s in summary}
    base, kd, out = by.get("no-kd"), [by[n] for n in SCRATCH if n in by], []
    if base and kd:
        best = max(kd, key=lambda s: min(_delta(s, base, "seen"), _delta(s, base, "held_out")))
        ds, dh = _delta(best, base, "seen"), _delta(best, base, "held_out")
        out.append(_verdict(f"best KD beats no-KD from scratch at {steps} steps by ≥ +4 seen and ≥ +4 held-out",
                            f"{best['row']}: {ds:+.1f} seen, {dh:+.1f} held-out", min(ds, dh) - 4))  # fmt: skip
        top = max(kd, key=lambda s: s["seen"]["mean"])
        when = "" if 2 * steps == teacher_steps else f" (measured at {steps} steps; half is {teacher_steps // 2})"
        out.append(_verdict(f"KD ≥ +15 seen over no-KD at half the teacher's steps{when}",
                            f"{top['row']}: {_delta(top, base, 'seen'):+.1f} seen", _delta(top, base, "seen") - 15))  # fmt: skip
    students = [s for s in summary if s["row"] != "no-kd"]  # any start: scratch or inherited
    if teacher and students:
        top = max(students, key=lambda s: s["seen"]["mean"])
        ratio = 100 * top["seen"]["mean"] / teacher["seen"]
        out.append(_verdict("student ≥ 95 % of the teacher on seen",
                            f"{top['row']}: {top['seen']['mean']:.1f} / {teacher['seen']:.1f} = {ratio:.1f} %", ratio - 95))  # fmt: skip
    manual, auto = by.get("half: manual inherit"), by.get("half: auto inherit")
    if manual and auto:
        ds, dh = _delta(auto, manual, "seen"), _delta(auto, manual, "held_out")
        out.append(_verdict("auto inheritance ≥ manual inheritance at the same size and steps",
                            f"seen {ds:+.1f}, held-out {dh:+.1f} (layer params {auto['params_layers']:,} "
                            f"vs {manual['params_layers']:,})", min(ds, dh)))  # fmt: skip
    if teacher:
        out.append(_verdict("teacher seen ≥ 92 %", f"{teacher['seen']:.1f}", teacher["seen"] - 92))
        out.append(_verdict("teacher held-out shape ≥ 60 %", f"{teacher['held_out_shape']:.1f}",
                            teacher["held_out_shape"] - 60))  # fmt: skip
    return out


def markdown(summary: list[dict], teacher: dict | None, args, verdicts=(), teacher_meta=None) -> str:
    """The results table (and the targets' verdicts) as Markdown."""
    lines = [
        f"Procedural task, {args.steps} student steps × batch {args.batch_size}, seeds {args.seeds}; "
        f"zero-shot top-1 %, mean ± half-range; {args.eval_held_out} images per held-out pair.",
        "",
    ]
    if teacher:
        took = (f" (procedural data v{teacher_meta.get('data_version', 1)}, "
                f"{teacher_meta['train_s']:.0f} s of training)") if teacher_meta else ""  # fmt: skip
        lines += [f"Teacher{took}: seen {teacher['seen']:.1f}, held-out {teacher['held_out']:.1f}, "
                  f"held-out shape {teacher['held_out_shape']:.1f}.", ""]  # fmt: skip
    lines += [
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
    if verdicts:
        lines += ["", "| target | measured | met | margin (points) |", "|---|---|---|---|"]
        lines += [f"| {v['target']} | {v['measured']} | {'yes' if v['met'] else 'no'} | {v['gap']:+.1f} |"
                  for v in verdicts]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Seen and held-out accuracy against steps, one line per row (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(dict.fromkeys(r["row"] for r in rows))
    for i, name in enumerate(names):
        curves = [r["curve"] for r in rows if r["row"] == name and r["curve"]]
        if not curves:
            continue
        steps = [p["step"] for p in curves[0]]
        for ax, key in zip(axes, ("seen", "held_out")):
            ys = [sum(c[i][key] for c in curves) / len(curves) for i in range(len(steps))]
            ax.plot(steps, ys, marker="o", label=name, linestyle="-" if i < 10 else "--")  # 10 colours
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
    ap.add_argument("--name", default="distill_bench", help="report file names: NAME.json, .md, .png")
    ap.add_argument("--doc", help="also write the tables into this file's generated block (docs/distill.md)")
    ap.add_argument(
        "--warm-cache", action="store_true",
        help="first compute the teacher's embeddings of every training item (once, on disk)",
    )  # fmt: skip
    ap.add_argument(
        "--no-report", action="store_true",
        help="only run (into --work); a later invocation over every row writes the report",
    )  # fmt: skip
    args = ap.parse_args(argv)
    args.eval_every = args.eval_every or max(1, args.steps // 4)
    return args


def _teacher(needed: bool, eval_held_out: int, evaluate: bool = True):
    """``(folder, zero-shot eval, meta)`` of the cached procedural teacher; trained first when a
    row needs it and it is not cached (meta then has the wall time of that first training)."""
    from edgeclip.distill.cli import procedural_teacher_dir, resolve_teacher
    from edgeclip.distill.evaluate import zero_shot
    from edgeclip.distill.procedural import DATA_VERSION, eval_set
    from edgeclip.distill.students import load_model

    cached = (procedural_teacher_dir() / "config.json").is_file()
    if not (needed or cached):
        return None, None, None
    t = time.perf_counter()
    teacher = resolve_teacher("procedural-teacher")
    meta = json.loads((Path(teacher) / "edgeclip_distill.json").read_text())
    info = {"train_s": round(meta["result"]["elapsed_s"], 1), "steps": meta["result"]["steps"],
            "batch_size": meta["config"]["batch_size"], "data_version": DATA_VERSION}  # fmt: skip
    if not cached:
        info["first_training_wall_s"] = round(time.perf_counter() - t, 1)
    if not evaluate:
        return teacher, None, info
    tm = load_model(teacher).eval()
    ev = zero_shot(tm, eval_set(eval_held_out, 20, image_size=tm.config.vision_config.image_size))
    return teacher, ev, info


def update_doc(path: Path, md: str, name: str = "distill-bench") -> None:
    """Replace the ``<!-- generated:NAME -->`` block of a Markdown file with ``md``."""
    import re

    text = path.read_text()
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no <!-- generated:{name} --> block")
    path.write_text(pattern.sub(lambda m: m.group(1) + md + m.group(2), text))


def _warm(teacher: str, size: int) -> None:
    from edgeclip.distill.cli import cache_dir
    from edgeclip.distill.students import load_arch
    from edgeclip.distill.teacher_cache import warm_procedural

    arch, t = load_arch("procedural-student"), time.perf_counter()
    n = warm_procedural(teacher, cache_dir() / "teacher-features", size, arch["image_size"], arch["context_length"])
    print(f"teacher embeddings of {n} training items computed in {time.perf_counter() - t:.0f} s", flush=True)


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
    from edgeclip.distill.cli import TEACHER_STEPS

    need = any(needs_teacher(n) for n in names)
    teacher, t_eval, t_meta = _teacher(need, args.eval_held_out, evaluate=not args.no_report)
    if args.warm_cache and teacher:
        _warm(teacher, args.procedural_size)
    cache: dict = {}  # teacher embeddings shared by every run: a KD step costs a plain step
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            rows.append(_run(name, seed, args, teacher, cache))
            r = rows[-1]
            print(f"{name} seed {seed}: seen {r['eval']['seen']:.1f} held-out {r['eval']['held_out']:.1f} "
                  f"shape {r['eval']['held_out_shape']:.1f} ({r['time_s']:.0f} s)", flush=True)  # fmt: skip
    if args.no_report:
        return 0
    summary = summarise(rows)
    verdicts = targets(summary, t_eval, args.steps, TEACHER_STEPS)
    out = Path(args.out or ROOT / "benchmarks" / "results" / host_slug())
    out.mkdir(parents=True, exist_ok=True)
    from benchmarks.device import device_report

    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device_report(),
              "teacher": {"dir": teacher, "eval": t_eval, **(t_meta or {})},
              "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out", "no_report", "warm_cache", "doc", "name")},
              "summary": summary, "targets": verdicts, "runs": rows}  # fmt: skip
    md = markdown(summary, t_eval, args, verdicts, t_meta)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(md)
    plot(rows, out / f"{args.name}.png")
    if args.doc:
        update_doc(Path(args.doc), md, args.name.replace("_", "-"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
