"""Search quality of ``edgeclip search`` with a CLIP trained here: text queries, rclip-style
``--add``/``--subtract`` arithmetic, and ``--under`` (one folder).

    python -m benchmarks.search_quality [--work DIR]

The model is ``benchmarks/index_model.py``'s (400 steps on procedural shapes, the one
``tests/test_index_search.py`` uses, kept under EDGECLIP_HOME/test-models). The tree holds 480
pictures, 10 of each of the 8 colours x 6 shapes, JPEG and PNG, one folder per colour. Measured:

* precision@10 of "a photo of a {colour} {shape}", and how often the colour alone is right;
* arithmetic: "a photo of a {c} {s}" + "a photo of a {c2} shape" - "a photo of a {c} shape",
  for every pair where the tree has shape s in both colours: the share of colour c2 in the top
  10 with and without the terms, and the precision for "{c2} {s}" against asking directly.

Results: ``benchmarks/results/<host>/search_quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.hosts import host_label, write_result
from benchmarks.index_model import cached_bundle

ROOT = Path(__file__).resolve().parents[1]
STEPS = 1600  # also tests/test_index_search.py's: 48 colour x shape pairs need more than 400


def shapes_tree(root: Path, per_class: int = 10) -> dict[str, str]:
    from converters.calibration import synthetic_pairs

    images, _, labels = synthetic_pairs(48 * per_class, 96, seed=7)
    truth = {}
    for i, (im, label) in enumerate(zip(images, labels)):
        path = root / label.split()[0] / f"{i:04d}.{'jpg' if i % 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, quality=95)
        truth[str(path)] = label
    return truth


def _share(hits: list, truth: dict[str, str], word: str, part: int) -> float:
    return float(np.mean([truth[h.path].split()[part] == word for h in hits]))


def measure(ix: Any, truth: dict[str, str]) -> dict[str, Any]:
    labels = sorted(set(truth.values()))
    queries = {lab: ix.search(f"a photo of a {lab}", k=10) for lab in labels}
    exact = [np.mean([truth[h.path] == lab for h in hits]) for lab, hits in queries.items()]
    colour = [_share(hits, truth, lab.split()[0], 0) for lab, hits in queries.items()]
    before, after, target_after, target_direct = [], [], [], []
    for lab in labels:
        c, shape = lab.split()
        # only colours the tree has in this shape, so "the same shape in C2" exists
        for target in (t for t in labels if t.endswith(f" {shape}") and t != lab):
            c2 = target.split()[0]
            hits = ix.search(f"a photo of a {lab}", k=10, add=f"a photo of a {c2} shape",
                             subtract=f"a photo of a {c} shape")  # fmt: skip
            before.append(_share(queries[lab], truth, c2, 0))
            after.append(_share(hits, truth, c2, 0))
            target_after.append(np.mean([truth[h.path] == target for h in hits]))
            target_direct.append(np.mean([truth[h.path] == target for h in queries[target]]))
    return {
        "queries": len(labels), "arithmetic_queries": len(after),
        "precision_at_10_mean": round(float(np.mean(exact)), 4),
        "precision_at_10_red_circle": round(float(np.mean([truth[h.path] == "red circle" for h in queries["red circle"]])), 4),
        "colour_right_mean": round(float(np.mean(colour)), 4),
        "arithmetic_new_colour_share_before": round(float(np.mean(before)), 4),
        "arithmetic_new_colour_share_after": round(float(np.mean(after)), 4),
        "arithmetic_new_colour_share_after_min": round(float(np.min(after)), 4),
        "arithmetic_target_precision": round(float(np.mean(target_after)), 4),
        "direct_target_precision": round(float(np.mean(target_direct)), 4),
    }  # fmt: skip


def _digest(bundle: Path) -> str:
    from edgeclip.bundle import Bundle

    return Bundle.open(bundle).digest[:16]


def render_md(res: dict[str, Any]) -> str:
    m = res["measured"]
    return "\n".join([
        f"# Search quality, model trained here: {res['host']}", "",
        f"{res['files']} files: {res['files'] // m['queries']} of each of the {m['queries']} colour x "
        f"shape pairs. Model `benchmarks/index_model.py` ({STEPS} steps), bundle digest "
        f"{res['model']['bundle_digest']}.", "",
        f"- precision@10 over the {m['queries']} queries \"a photo of a C S\": "
        f"{m['precision_at_10_mean']} (\"a red circle\": {m['precision_at_10_red_circle']}); colour "
        f"right: {m['colour_right_mean']}.",
        f"- \"a photo of a C S\" `--add \"a photo of a C2 shape\" --subtract \"a photo of a C shape\"`, "
        f"over the {m['arithmetic_queries']} pairs where the tree has S in both colours: share of C2 in the "
        f"top 10 {m['arithmetic_new_colour_share_before']} -> {m['arithmetic_new_colour_share_after']} "
        f"(worst pair {m['arithmetic_new_colour_share_after_min']}); precision@10 for \"C2 S\" "
        f"{m['arithmetic_target_precision']}, against {m['direct_target_precision']} when asked directly.", "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from edgeclip.index import Index

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None, help="where the tree and index go (default: temp)")
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="search-quality-"))
    bundle = cached_bundle(STEPS)
    truth = shapes_tree(work / "shapes")
    with Index(work / "shapes.db", bundle) as ix:
        ix.update([work / "shapes"])
        measured = measure(ix, truth)
    res = {"what": "edgeclip search quality", "host": host_label(), "files": len(truth),
           "model": {"recipe": "benchmarks/index_model.py", "steps": STEPS,
                     "bundle_digest": _digest(bundle)}, "measured": measured}  # fmt: skip
    write_result("search_quality", res, render_md(res), args.out_dir)
    return res


if __name__ == "__main__":
    main()
