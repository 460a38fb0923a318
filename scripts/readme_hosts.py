"""README blocks ``host-speed`` (per host: cold start, the roofline, ONNX Runtime settings, probe
stability) and ``index-speed`` (photo indexing from 12 MP JPEGs), each line from one committed
result file under ``benchmarks/results/<host>/``. Used by ``scripts/render_readme.py``."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def peak_rss_mib(row: dict, old_divisor: float) -> float:
    """A row's peak RSS in MiB. Files written before 2026-12-03 18:00 UTC hold ``peak_rss_mb``:
    VmHWM's KiB divided by ``old_divisor`` (1000 in cold_start.json, 1e6/1024 in the bench's
    results.json), converted exactly here so every host's numbers are in one unit."""
    if "peak_rss_mib" in row:
        return row["peak_rss_mib"]
    return row["peak_rss_mb"] * old_divisor / 1024


def _cold(res: dict) -> str:
    parts = []
    for row in res["rows"]:
        later = row.get("later_median")
        if later is None:
            reason = str(row["first"].get("error", ""))
            why = "refused: failed its on-device check here" if "VerificationError" in reason else "error"
            parts.append(f"{row['variant']} {why}")
            continue
        parts.append(f"{row['variant']} {later['cold_start_s']:.2f} s (first load "
                     f"{row['first']['cold_start_s']:.2f} s, peak RSS {peak_rss_mib(later, 1000):.0f} MiB)")  # fmt: skip
    return "cold start (fresh process: import + `edgeclip.load` + first `classify`): " + "; ".join(parts)


def _roofline(res: dict) -> str | None:
    roof = res.get("roofline") or {}
    rows, peaks = roof.get("rows"), roof.get("peaks")
    if not rows or not peaks:
        return None
    best, above = {}, []
    for r in rows:
        if r["batch_size"] != 32 or r["variant"].startswith("torch"):
            continue
        if r["fraction"] > 1.05:  # faster kernels than the measured peak (bf16 on AVX512-BF16/AMX)
            above.append(f"{r['variant']} {r['achieved_gmac_s']} GMAC/s")
            continue
        best[r["peak"]] = max(best.get(r["peak"], r), r, key=lambda x: x["fraction"])
    share = "; ".join(f"{r['variant']} at batch 32 reaches {100 * r['fraction']:.0f} % of the {k} "
                      f"roofline ({r['achieved_gmac_s']} GMAC/s)" for k, r in sorted(best.items()))  # fmt: skip
    caveat = _counted_at_full_context(res)
    if above and caveat:
        share += "; above ONNX Runtime's fp32 GEMM peak as counted: " + ", ".join(above)
    elif above:
        share += ("; above ONNX Runtime's fp32 GEMM peak, since OpenVINO uses other kernels here (bf16 "
                  "for fp16 IR on AVX512-BF16 CPUs): " + ", ".join(above))
    return (f"GEMM peak (ONNX Runtime MLAS, {peaks['threads']} threads) {peaks['fp32_gmac_s']} GMAC/s "
            f"fp32, {peaks['int8_gmac_s']} GMAC/s int8; {share}{caveat}")  # fmt: skip


def _counted_at_full_context(res: dict) -> str:
    """The caveat for results from before the bench counted each row's text at the length its
    tower ran: those counted every text at the full context, so their rates are too high."""
    rows, macs = res["roofline"]["rows"], res.get("macs") or {}
    if all(r.get("text_tokens") for r in rows) or not macs.get("image_macs"):
        return ""
    most = 100 * (macs["pair_macs"] / macs["image_macs"] - 1)
    return (f" (these rates count every text at the full {res['model']['architecture']['context_length']}"
            f"-token context, as the bench did until 2026-12-08, though the text tower runs only up "
            f"to the prompts' last token: they are too high by up to {most:.0f} %)")


def _ort(res: dict) -> str:
    modes = res["spinning"]
    if all("spinning=run" in m for m in modes.values()):  # measured since the `run` default
        spin = "; ".join(f"{vid} image then text {m['spinning=0']['image_then_text_ms']} → "
                         f"{m['spinning=run']['image_then_text_ms']} ms (kept spinning: "
                         f"{m['spinning=1']['image_then_text_ms']}), image alone "
                         f"{m['spinning=0']['image_ms']} → {m['spinning=run']['image_ms']} ms, "
                         f"CPU per call 50 ms apart {m['spinning=0']['spaced_cpu_ms']} → "
                         f"{m['spinning=run']['spaced_cpu_ms']} ms"
                         for vid, m in modes.items())  # fmt: skip
        line = f"ONNX Runtime threads not spinning → spinning within each run (the default): {spin}"
    else:  # older files: spinning on and off only, when off was the default
        spin = "; ".join(f"{vid} image then text {m['spinning=1']['image_then_text_ms']} → "
                         f"{m['spinning=0']['image_then_text_ms']} ms, image alone "
                         f"{m['spinning=1']['image_ms']} → {m['spinning=0']['image_ms']} ms"
                         for vid, m in modes.items())  # fmt: skip
        line = f"ONNX Runtime threads spinning → not spinning (the default then): {spin}"
    fusions = res.get("fusions", {})
    for tower, kind in (("image", "fp32"), ("image-int8", "dynamic-INT8")):
        fus = fusions.get(tower)
        if not fus:
            continue
        kept = ("so edgeclip leaves fusion to ONNX Runtime's own optimiser"
                if fus["fused_ms"] >= 0.95 * fus["ort_only_ms"] else "faster: worth a converter step")
        line += (f". `onnxruntime.transformers` fusions on the {kind} image tower: {fus['ort_only_ms']} → "
                 f"{fus['fused_ms']} ms (cosine {fus['cosine']}), {kept}")  # fmt: skip
    return line


def _probe(res: dict) -> str:
    same = res.get("fastest_same", res.get("ranking_same"))
    line = (f"speed probe twice in a row: largest disagreement {res['max_ratio']}×, same fastest "
            f"variant both times: {'yes' if same else 'no'}")
    if "chosen" in res:  # recorded since auto selection treats rates within 5 % as a tie
        chosen = res["chosen"] if isinstance(res["chosen"], list) else [res["chosen"]]
        line += (f"; auto selection chose {' then '.join(chosen)}"
                 f" ({'the same' if res['chosen_same'] else 'different'} both times)")
    return line


def _litert_lengths(res: dict) -> str:
    by_variant: dict[str, list[dict]] = {}
    for row in res["rows"]:
        by_variant.setdefault(row["variant"], []).append(row)
    parts = "; ".join(vid + " " + ", ".join(f"{r['texts_per_s_77']:,.1f} → {r['texts_per_s']:,.1f} "
                                           f"at batch {r['batch']}" for r in rows)
                      for vid, rows in by_variant.items())  # fmt: skip
    cos = min(r["min_cosine_vs_77_over_tokenizer_corpus"] for r in res["rows"])
    run = sorted({r["positions_run"] for r in res["rows"]})
    return (f"LiteRT text tower, all 77 positions → a signature per length (the bench's prompts "
            f"run {'/'.join(map(str, run))}), texts/s: {parts}; min cosine against the 77-position "
            f"run over the tokenizer corpus {cos:.7f} (load average "
            f"{res['measured_on']['load_average'][0]:.2f} when measured)")


def _tokenizer(res: dict) -> str:
    long = res["long_inputs"]
    return (f"tokenizer (`benchmarks/tokenizer_parity.py`): {res['golden_match']} / {res['corpus']} "
            f"strings match OpenAI's ids; {res['edgeclip_cold_strings_per_s']:,} strings/s with cold "
            f"caches, {res['edgeclip_warm_strings_per_s']:,} warm; one unbroken word of 1,024 / "
            f"4,096 / 16,384 letters {long['word_1024_letters_s']} / {long['word_4096_letters_s']} / "
            f"{long['word_16384_letters_s']} s, a 900 kB text {long['text_900kB_s']} s (the rows "
            "stop encoding at the context)")


def host_speed() -> str:
    """One bullet list per host that committed any of these result files."""
    out = []
    for host in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        bench = _load(host / "results.json") or {}
        items = [(_cold, _load(host / "cold_start.json")), (_ort, _load(host / "ort_settings.json")),
                 (_probe, _load(host / "probe_stability.json")),
                 (_litert_lengths, _load(host / "litert_text_lengths.json")),
                 (_tokenizer, _load(host / "tokenizer.json"))]  # fmt: skip
        lines = [make(res) + (f" (load average {res['load_average'][0]:.2f} when measured)"
                              if res.get("load_average") else "") for make, res in items if res]  # fmt: skip
        roof = _roofline(bench)
        if roof:
            lines.insert(0, roof)
        if not lines:
            continue
        out += [f"**{host.name}**:", ""] + [f"- {line}." for line in lines] + [""]
    return "\n".join(out).rstrip()


def index_speed() -> str:
    """Files -> stored vectors against model only, per host, from ``index_bench.json``."""
    rows = ["| host | variant, batch | model only img/s | files → vectors img/s | with `--previews` img/s "
            "| without draft img/s |", "|---|---|---|---|---|---|"]  # fmt: skip
    cosines = []
    for host in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        res = _load(host / "index_bench.json")
        if not res or "e2e" not in res:
            continue
        for e in res["e2e"]:
            s = e["images_per_s"]
            pv = (f"{s['end_to_end_previews']} (**{100 * e['previews_over_model_only']:.1f} %**)"
                  if "end_to_end_previews" in s else "not measured")  # fmt: skip
            rows.append(f"| {host.name} | {e['variant']}, {e['batch_size']} | {s['model_only']} | "
                        f"{s['end_to_end']} (**{100 * e['end_to_end_over_model_only']:.1f} %**) | {pv} | "
                        f"{s['end_to_end_no_draft']} |")  # fmt: skip
        for model, summ in res.get("draft", {}).get("summary", {}).items():
            if "preview_vs_full_cos_mean" in summ:
                cosines.append(f"{host.name} {model}: draft {summ['draft_vs_full_cos_mean']} / "
                               f"{summ['draft_vs_full_cos_min']}, preview {summ['preview_vs_full_cos_mean']} / "
                               f"{summ['preview_vs_full_cos_min']}")  # fmt: skip
    out = "\n".join(rows)
    if cosines:
        out += ("\n\nCosine to the full decode's vector (mean / worst over the 8 photos): "
                + "; ".join(cosines) + ".")
    return out


def serve_towers() -> str:
    """docs/serve.md's memory by tower, per host, from ``serve_memory.json``."""
    rows = ["| host | server | step | towers open | worker MB | server + worker MB |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for host in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        res = _load(host / "serve_memory.json")
        if not res:
            continue
        modes = (("`--preload`", res["preloaded"]),
                 (f"on demand, `--image-idle-ttl {res['image_idle_ttl_s']:g}`", res["on_demand"]))  # fmt: skip
        for mode, points in modes:
            for p in points:
                rows.append(f"| {host.name} | {mode} | {p['step']} | "
                            f"{' + '.join(p['towers']) or 'none'} | {p['worker_mb'] or 0:.0f} | "
                            f"{p['total_mb']:.0f} |")  # fmt: skip
    return "\n".join(rows)
