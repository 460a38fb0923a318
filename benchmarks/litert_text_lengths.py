"""LiteRT text tower: a signature per sequence length against running all 77 positions.

    python benchmarks/litert_text_lengths.py BUNDLE [--threads 2] [--batches 1,8]

For each LiteRT variant of BUNDLE whose text files hold ``l<N>`` signatures, times texts/s of
the bench's prompts (``edgeclip.timing.sample_inputs``, the prompts ``edgeclip bench`` times)
through the runtime's ``TowerRunner`` twice, alternating rounds: as shipped (padding cut to
the shortest signature that holds the batch's last end token) and padded to 77 (the ``l77``
signature: the graph a one-signature export runs). Also the parity of the two over the
tokenizer corpus (min cosine). Writes ``benchmarks/results/<host>/litert_text_lengths.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hosts import measured_on, write_result  # noqa: E402
from edgeclip.bundle import Bundle  # noqa: E402
from edgeclip.timing import Settings, rate, sample_inputs, time_calls  # noqa: E402
from edgeclip.tokenizer import Tokenizer  # noqa: E402
from edgeclip.towers import TowerRunner, open_towers, pad_to_length_bucket  # noqa: E402

ROUNDS = 3


def _runners(bundle: Bundle, variant, threads: int) -> tuple[TowerRunner, TowerRunner]:
    """(as shipped, all 77 positions): the same sessions, the second told of no lengths."""
    _, text = open_towers(bundle.root, variant, threads=threads)
    full = TowerRunner(dataclasses.replace(variant.text, sequence_lengths=()), text._opener, True)
    full._sessions = text._sessions  # one interpreter each: the comparison is the feed alone
    return text, full


def _parity(text: TowerRunner, full: TowerRunner) -> float:
    texts = json.loads((ROOT / "tests" / "data" / "tokenizer_corpus.json").read_text())["texts"]
    ids = Tokenizer()(texts)
    a, b = text(ids, 1), full(ids, 1)
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min())


def _texts_per_s(runner: TowerRunner, ids: np.ndarray, batch: int, settings: Settings) -> float:
    kw = dict(warmup=settings.warmup, repeats=settings.repeats, min_time=settings.min_time,
              max_repeats=settings.max_repeats)  # fmt: skip
    return rate(time_calls(lambda: runner(ids[:batch], batch), **kw), batch)


def measure(bundle: Bundle, variant, threads: int, batches: list[int], settings: Settings) -> list[dict]:
    text, full = _runners(bundle, variant, threads)
    _, ids = sample_inputs(max(batches), int(bundle.preprocess["image_size"]))
    rows = []
    for batch in batches:
        shipped, padded = [], []
        for _ in range(ROUNDS):  # alternating, so drift on a shared VM hits both alike
            shipped.append(_texts_per_s(text, ids, batch, settings))
            padded.append(_texts_per_s(full, ids, batch, settings))
        rows.append({
            "variant": variant.id, "batch": batch,
            "positions_run": int(pad_to_length_bucket(ids[:batch], variant.text.sequence_lengths).shape[1]),
            "texts_per_s": round(float(np.median(shipped)), 1),
            "texts_per_s_77": round(float(np.median(padded)), 1),
            "speedup": round(float(np.median(shipped) / np.median(padded)), 2),
        })  # fmt: skip
    parity = _parity(text, full)
    for row in rows:
        row["min_cosine_vs_77_over_tokenizer_corpus"] = parity
    return rows


def _markdown(result: dict) -> str:
    on = result["measured_on"]
    lines = [
        f"# LiteRT text tower: sequence-length signatures vs 77 positions ({on['cpu']}, {on['isa']})",
        "",
        f"Bundle `{result['bundle']}` ({result['weights']}), {result['threads']} threads, the "
        "bench's prompts; median of alternating rounds. Parity: min cosine against the 77-position "
        "run over the tokenizer corpus.",
        "",
        "| variant | batch | positions run | texts/s | texts/s at 77 | speed-up | min cosine |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['batch']} | {r['positions_run']} | {r['texts_per_s']:,.1f} | "
                     f"{r['texts_per_s_77']:,.1f} | {r['speedup']:.2f}× | "
                     f"{r['min_cosine_vs_77_over_tokenizer_corpus']:.7f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--weights", default="TinyCLIP-8M-shaped random weights")
    args = parser.parse_args(argv)
    bundle = Bundle.open(args.bundle, verify=False)
    batches = [int(b) for b in args.batches.split(",")]
    variants = [v for v in bundle.variants if v.backend == "litert" and v.text.sequence_lengths]
    if not variants:
        print(f"{args.bundle}: no LiteRT variant with sequence-length signatures", file=sys.stderr)
        return 2
    rows = [row for v in variants for row in measure(bundle, v, args.threads, batches, Settings())]
    result = {"measured_on": measured_on(), "bundle": Path(args.bundle).name, "weights": args.weights,
              "threads": args.threads, "settings": Settings().as_dict(), "rows": rows}  # fmt: skip
    write_result("litert_text_lengths", result, _markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
