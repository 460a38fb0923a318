"""How fast is each ONNX Runtime INT8 configuration against torch eager, on this CPU?

    .venv/bin/python -m benchmarks.onnx_int8_configs BUNDLE [--rounds 3] [--batch-sizes 1,32]

Builds every candidate of ``converters.quantize_onnx.INT8_CANDIDATES`` from the bundle's onnx-fp32
graphs, whatever the gate on the bundle's (random) weights would say of it: the question here is
the speed of a configuration, and whether it passes belongs to a trained model's gate on this
host (``benchmarks/variants_gate_trained.py``). Then times each one's towers through edgeclip's
own runner, with onnx-fp32 and torch eager fp32 (the bundle's checkpoint), all interleaved call
by call (``edgeclip bench --interleave``'s loop). pairs/s as in the bench.
Writes ``benchmarks/results/<host>/onnx_int8_configs.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.hosts import measured_on, write_result


def build_all(bundle: Any, work: Path) -> list[Any]:
    """Each candidate as a ``Variant`` whose files live under ``work``."""
    from converters import quantize_onnx as q
    from edgeclip.bundle import Variant

    fp32 = next(v for v in bundle.manifest["variants"] if v["id"] == "onnx-fp32")
    shutil.copytree(bundle.root / "onnx-fp32", work / "onnx-fp32", dirs_exist_ok=True)
    built = [Variant.from_dict(fp32)]
    for name, builder, options in q.INT8_CANDIDATES:
        made = getattr(q, builder)(work, fp32, None, None, {**options, "id": name})
        built.append(dataclasses.replace(Variant.from_dict(made), id=name))
    return built


def main(argv: list[str] | None = None) -> int:
    from benchmarks import throughput as T
    from benchmarks import variants as V
    from edgeclip.bundle import Bundle
    from edgeclip.towers import open_towers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    bundle = Bundle.open(args.bundle)
    ckpt = V.checkpoint_path(bundle)
    if ckpt is None:
        raise SystemExit(f"{args.bundle}: its source checkpoint is not on this machine")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        towers = []
        for v in build_all(bundle, work):
            image, text = open_towers(work, v, args.threads, "cpu")
            towers.append(({"variant": v.id, "config": (v.options or {}).get("config")}, image, text, None))
        ri, rt, _ = T.torch_towers(V.load_torch(ckpt), args.threads)
        towers.append(({"variant": "torch-fp32"}, ri, rt, None))
        inputs = T.sample_inputs(max(sizes), int(bundle.preprocess.get("image_size", 224)))

        class _Bar:  # run_interleaved reports progress to a bar; a line per round is enough here
            def set_description(self, text: str) -> None:
                print(text, flush=True)

            def update(self, _: int) -> None:
                pass

        T.run_interleaved(towers, args.rounds, inputs, sizes, T.Settings(), rows.append, _Bar())
    torch = {r["batch_size"]: r["pairs_per_s"] for r in rows if r["variant"] == "torch-fp32"}
    for r in rows:
        r["vs_torch"] = round(r["pairs_per_s"] / torch[r["batch_size"]], 3) if torch.get(r["batch_size"]) else None
        r.pop("latency", None)
    result = {**measured_on(), "threads": args.threads, "rounds": args.rounds, "batch_sizes": sizes,
              "rows": rows}  # fmt: skip
    write_result("onnx_int8_configs", result, markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# ONNX Runtime INT8 configurations, {r['cpu']} ({r['isa']}), {r['threads']} threads",
             "", f"TinyCLIP-8M-shaped graphs built from the bundle's onnx-fp32 with each search "
             f"candidate; every tower and torch eager timed call by call in turn, {r['rounds']} "
             "rounds, each row the median round. Speed only: which configuration passes is a "
             "trained model's gate on this host.", "",
             "| variant | batch | images/s | texts/s | pairs/s | × torch eager | rounds pairs/s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in r["rows"]:
        rounds = ", ".join(f"{x:.1f}" for x in row["pairs_per_s_rounds"])
        ratio = f"{row['vs_torch']:.2f}×" if row.get("vs_torch") else "–"
        lines.append(f"| {row['variant']} | {row['batch_size']} | {row['images_per_s']:.1f} | "
                     f"{row['texts_per_s']:,.1f} | {row['pairs_per_s']:.1f} | {ratio} | {rounds} |")  # fmt: skip
    lines += ["", f"Load average at start: {', '.join(f'{x:.2f}' for x in r['load_average'])}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
