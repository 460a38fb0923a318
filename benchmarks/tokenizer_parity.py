"""Tokenizer parity and speed: edgeclip vs OpenAI's simple_tokenizer (open_clip) and transformers.

Writes the golden ids the tests compare against, from the reference tokenizer loaded standalone
out of an unpacked open_clip_torch wheel (nothing is installed)::

    pip download --no-deps open_clip_torch==3.3.0 -d /tmp/oc && cd /tmp/oc && unzip -q *.whl
    python benchmarks/tokenizer_parity.py --reference /tmp/oc/open_clip/tokenizer.py --write-golden

Without ``--reference`` it checks edgeclip against the stored golden ids. It then times
edgeclip (and the reference, when given) on the corpus and on long unbroken words (what one
pasted blob costs a server's model thread), prints one JSON line, and with ``--out`` writes it
(``benchmarks/results/<host>/tokenizer.json``). The reference module imports torch, so run
this in the dev/convert environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclip import tokenizer as etok  # noqa: E402

DATA = ROOT / "tests" / "data"
CORPUS = DATA / "tokenizer_corpus.json"
GOLDEN = DATA / "tokenizer_golden.json"


def load_reference(path: Path):
    """open_clip's ``tokenizer.py`` as a standalone module (it needs ftfy, regex, numpy, torch)."""
    spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rows_up_to_eot(arr) -> list[list[int]]:
    out = []
    for row in arr.tolist():
        out.append(row[: row.index(etok.EOT_ID) + 1])
    return out


def write_golden(ref_mod, ref_path: Path, texts: list[str]) -> None:
    ref = ref_mod.SimpleTokenizer()
    ids = rows_up_to_eot(ref(texts, context_length=77).numpy())
    n_tokens = [len(ref.encode(t)) for t in texts]
    # One string's ids per line keeps the file small and its diffs readable.
    lines = ",\n".join(json.dumps(r, separators=(",", ":")) for r in ids)
    header = {
        "reference": "open_clip_torch==3.3.0 open_clip/tokenizer.py SimpleTokenizer (OpenAI CLIP)",
        "reference_file": str(ref_path.name),
        "context_length": 77,
        "note": "ids[i] is row i of tokenize(texts) up to and including <end_of_text> (49407); "
        "n_tokens[i] is len(encode(texts[i])) before truncation",
    }
    body = json.dumps(header, ensure_ascii=True)[:-1]
    GOLDEN.write_text(
        body
        + ',\n"n_tokens":'
        + json.dumps(n_tokens, separators=(",", ":"))
        + ',\n"ids":[\n'
        + lines
        + "\n]}\n",
        encoding="utf-8",
    )
    print(f"wrote {GOLDEN.relative_to(ROOT)} ({GOLDEN.stat().st_size} bytes, {len(ids)} rows)")


def time_it(fn, texts: list[str], repeat: int = 3) -> float:
    """Best strings/s over ``repeat`` passes of one call per string."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for t in texts:
            fn(t)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def time_long_inputs(tok) -> dict:
    """Seconds to tokenize one unbroken word of n random letters, and a 900 kB text of words:
    cost that must stay near-linear, because one such request holds a model thread."""
    import random
    import string

    rng = random.Random(0)
    out = {}
    for n in (1024, 4096, 16384):
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
        t0 = time.perf_counter()
        tok([word])
        out[f"word_{n}_letters_s"] = round(time.perf_counter() - t0, 4)
    text = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(8)) for _ in range(100_000))
    t0 = time.perf_counter()
    tok([text])
    out["text_900kB_s"] = round(time.perf_counter() - t0, 4)
    return out


def time_corpus(tok, prompts: list[str]) -> dict:
    """Strings/s on unique texts with cold BPE/text caches, then the same texts again (warm)."""
    out: dict = {}
    v = tok._v
    v.bpe.cache_clear()
    v.encode_cached.cache_clear()
    t0 = time.perf_counter()
    for t in prompts:
        tok([t])
    out["edgeclip_cold_strings_per_s"] = round(len(prompts) / (time.perf_counter() - t0))
    out["edgeclip_warm_strings_per_s"] = round(time_it(lambda t: tok([t]), prompts))
    v.encode_cached.cache_clear()  # BPE cache warm, text cache cold: the steady state on new text
    t0 = time.perf_counter()
    for t in prompts:
        tok([t])
    out["edgeclip_new_text_strings_per_s"] = round(len(prompts) / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    tok(prompts)
    out["edgeclip_batch_call_s"] = round(time.perf_counter() - t0, 4)
    out["n_timed"] = len(prompts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, help="open_clip/tokenizer.py from an unpacked wheel")
    ap.add_argument("--write-golden", action="store_true", help="(re)write the golden ids")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    texts = json.loads(CORPUS.read_text(encoding="utf-8"))["texts"]
    ref_mod = load_reference(args.reference) if args.reference else None
    if args.write_golden:
        if ref_mod is None:
            ap.error("--write-golden needs --reference")
        write_golden(ref_mod, args.reference, texts)
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))

    t0 = time.perf_counter()
    tok = etok.Tokenizer()
    tok.encode("warm up")
    load_s = time.perf_counter() - t0
    ours = rows_up_to_eot(tok(texts))
    matched = sum(a == b for a, b in zip(ours, golden["ids"]))
    result = {
        "corpus": len(texts),
        "golden_match": matched,
        "vocab_load_s": round(load_s, 3),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }

    prompts = [f"a photo of a {w}." for w in texts[:200]] + texts
    result.update(time_corpus(tok, prompts))
    if ref_mod is not None:
        ref = ref_mod.SimpleTokenizer()
        ref_rows = rows_up_to_eot(ref(texts, context_length=77).numpy())
        result["reference_vs_golden"] = sum(a == b for a, b in zip(ref_rows, golden["ids"]))
        t0 = time.perf_counter()
        for t in prompts:
            ref([t])
        result["reference_cold_strings_per_s"] = round(len(prompts) / (time.perf_counter() - t0))
        result["reference_warm_strings_per_s"] = round(time_it(lambda t: ref([t]), prompts))
    result["long_inputs"] = time_long_inputs(tok)
    print(json.dumps(result))
    if args.out:
        from benchmarks.hosts import host_label, measured_on

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"host": host_label(), **measured_on(), **result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
