"""Render README.md's (and docs/serve.md's) measured tables from the committed results under
``benchmarks/results/``.

Each generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
everything else in the README is hand-written. ``--check`` exits 1 when the README differs from
what the results say (a test runs it), so text and files cannot drift apart.

    python scripts/render_readme.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

#: how each variant is built (descriptive text, not measurement)
BUILT_WITH = {
    "torch-fp32": "transformers eager (the baseline)",
    "onnx-fp32": "`torch.onnx.export` (opset 17, dynamic batch)",
    "onnx-fp16": "onnxruntime float16 (fp32 io)",
    "onnx-int8": "search over dynamic configs (7-bit weights), else weight-only",
    "onnx-int8-dynamic": "`quantize_dynamic`, 7-bit per-channel weights",
    "onnx-int8-static": "QDQ, calibrated, LayerNorm/Softmax/GELU/Add kept float",
    "onnx-int8-weights": "`MatMulNBits` 8-bit, block 32",
    "openvino-fp32": "`openvino.convert_model`",
    "openvino-fp16": "IR compressed to fp16",
    "openvino-int8": "search: NNCF PTQ of the image tower (text: int8 weights), else weight-only",
    "openvino-int8-static": "NNCF `quantize`, model_type TRANSFORMER",
    "openvino-int8-weights": "NNCF `compress_weights`",
    "litert-fp32": "litert-torch, batch 1 and 8 graphs",
    "litert-int8": "search → ai-edge-quantizer `dynamic_wi8`",
    "litert-int8-dynamic": "ai-edge-quantizer `dynamic_wi8`",
    "litert-int8-static": "ai-edge-quantizer `wi8_ai8`",
    "litert-int8-weights": "ai-edge-quantizer `weight_only_wi8`",
}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _f(value, digits: int = 5, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.1%}".replace("%", " %") if pct else f"{value:.{digits}f}"


def _speed_rows(results: dict) -> dict[str, dict[int, float]]:
    rows: dict[str, dict[int, float]] = {}
    for row in results["throughput"]:
        rows.setdefault(row["variant"], {})[row["batch_size"]] = row["pairs_per_s"]
    return rows


def _same_config(vid: str, results: dict, gate: dict) -> bool:
    """A search variant's speed counts only where it timed the config the trained model shipped."""
    trained = (gate.get(vid) or {}).get("config")
    if trained is None:
        return True
    return (results.get("variant_configs") or {}).get(vid) == trained


def _host_dirs() -> list[Path]:
    return sorted(p for p in RESULTS.iterdir() if p.is_dir() and (p / "results.json").is_file())


def backends_table() -> str:
    """The backends × precisions table: gate on the trained model, speed and size per host."""
    gate = {v["id"]: v for v in _load(RESULTS / "variants_gate_trained.json")["variants"]}
    hosts = [(p.name, _load(p / "results.json")) for p in _host_dirs()]
    speed = {name: _speed_rows(res) for name, res in hosts}
    sizes = {m["variant"]: m["size_mb"] for _, res in hosts for m in res.get("memory", [])}
    head = "| variant | built with | kept config | MB | image cos | text cos | top-1 agree | gate |"
    head += "".join(f" {n} b1 | b32 |" for n, _ in hosts)
    lines = [head, "|" + "---|" * (8 + 2 * len(hosts))]
    ids = list(BUILT_WITH)
    for vid in ids:
        g = gate.get(vid)
        if g is None and not any(vid in s for s in speed.values()):
            continue
        verdict = "–" if g is None else ("pass" if g["passed"] else "**fail**")
        cells = [vid, BUILT_WITH[vid], f"`{g['config']}`" if g and g.get("config") else "–",
                 _f(sizes.get(vid), 1)]
        cells += [_f(g and g["image_cosine_mean"]), _f(g and g["text_cosine_mean"]),
                  _f(g and g.get("top1_agreement_tie_tolerant"), pct=True), verdict]  # fmt: skip
        for name, res in hosts:
            s, mark = speed[name].get(vid, {}), "" if _same_config(vid, res, gate) else " †"
            cells += [_f(s.get(1), 1) + (mark if s else ""), _f(s.get(32), 1) + (mark if s else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(best: dict, rows: dict, batch: int) -> str:
    """`` = N× torch eager fp32 (M)`` at this batch, where both were timed."""
    torch = rows.get("torch-fp32", {}).get(batch)
    if not torch or not best.get(batch):
        return ""
    return f" = {best[batch] / torch:.2f}× torch eager fp32 ({torch:.1f})"


def _gated(path: Path, gate: dict) -> tuple[dict, dict, list[str]]:
    """(results, pairs/s rows, gated variants): those that passed the trained model's gate, with
    its config, and their on-device check on this host. The trained model's gate run on this
    host (``<host>/variants_gate_trained.json``) takes the place of the shared one: INT8
    verdicts and kept configs differ between CPUs."""
    own = path / "variants_gate_trained.json"
    if own.is_file():
        gate = {v["id"]: v for v in _load(own)["variants"]}
    res = _load(path / "results.json")
    checks = path / "device_checks.json"
    passed_here = None
    if checks.is_file():
        passed_here = {r["variant"] for r in _load(checks)["variants"] if r["state"] == "passed"}
    rows = _speed_rows(res)
    ok = [v for v in rows if v in gate and gate[v]["passed"] and _same_config(v, res, gate)
          and (passed_here is None or v in passed_here)
          and not v.startswith("torch")]  # the baseline is not an edgeclip variant  # fmt: skip
    return res, rows, ok


def speed_summary() -> str:
    """Per host: the fastest variant that passed its gate on that host, against torch eager."""
    from readme_hosts import peak_rss_mib
    gate = {v["id"]: v for v in _load(RESULTS / "variants_gate_trained.json")["variants"]}
    out = []
    for path in _host_dirs():
        res, rows, ok = _gated(path, gate)
        torch_b1 = rows.get("torch-fp32", {}).get(1)
        if not ok or not torch_b1:
            continue
        best = max(ok, key=lambda v: rows[v].get(1, 0))
        mem = [m for m in res.get("memory", []) if m["variant"] in ok]
        rss = [peak_rss_mib(m, 1e6 / 1024) for m in mem]
        cold = [m["cold_start_s"] for m in mem]
        cpu = res["device"]["cpu"]["model"]
        out.append(
            f"- **{path.name}** ({cpu}): best gated variant **{best}**, {rows[best][1]:.1f} pairs/s "
            f"at batch 1 = {rows[best][1] / torch_b1:.2f}× torch eager fp32 ({torch_b1:.1f}); "
            f"{rows[best].get(32, 0):.1f} pairs/s at batch 32{_ratio(rows[best], rows, 32)}. "
            f"Gated variants: peak RSS "
            f"{min(rss):.0f}–{max(rss):.0f} MiB, cold start {min(cold):.2f}–{max(cold):.2f} s "
            f"(`benchmarks/results/{path.name}/`)."
            + (f" **Caveat:** {res['conditions']}." if res.get("conditions") else "")
        )
    return "\n".join(out)


def _best_ratio(rows: dict, ok: list[str], batch: int, target: float) -> str:
    torch = rows.get("torch-fp32", {}).get(batch)
    have = [v for v in ok if rows[v].get(batch)]
    if not torch or not have:
        return "–"
    best = max(have, key=lambda v: rows[v][batch])
    ratio = rows[best][batch] / torch
    return f"**{ratio:.2f}×** ({best})" if ratio >= target else f"{ratio:.2f}× ({best}), not met"


def _int8_start(path: Path) -> tuple[str, str]:
    """(cold start, peak RSS) cells from cold_start.json: the int8 variants served here."""
    from readme_hosts import peak_rss_mib

    cold = path / "cold_start.json"
    rows = [r for r in (_load(cold)["rows"] if cold.is_file() else [])
            if "int8" in r["variant"] and r.get("later_median")]  # fmt: skip
    if not rows:
        return "–", "–"
    start = min(rows, key=lambda r: r["later_median"]["cold_start_s"])
    small = min(rows, key=lambda r: peak_rss_mib(r["later_median"], 1000))
    s, m = start["later_median"]["cold_start_s"], peak_rss_mib(small["later_median"], 1000)
    s_cell = f"{s:.2f} s ({start['variant']})"
    m_cell = f"{m:.1f} MiB ({small['variant']})"
    return (f"**{s_cell}**" if s <= 0.5 else s_cell + ", not met",
            f"**{m_cell}**" if m <= 150 else m_cell + ", not met")


def targets_table() -> str:
    """The speed, cold start and memory targets per host, from each host's committed files."""
    gate = {v["id"]: v for v in _load(RESULTS / "variants_gate_trained.json")["variants"]}
    lines = ["| host | batch 1 ≥ 3× torch | batch 32 ≥ 5× | cold start ≤ 0.5 s (int8) "
             "| peak RSS ≤ 150 MiB (int8) | timed |", "|---|---|---|---|---|---|"]  # fmt: skip
    for path in _host_dirs():
        res, rows, ok = _gated(path, gate)
        how = ("interleaved call by call" if res["settings"].get("interleave")
               else f"{res['settings'].get('rounds', 1)} round(s) in turn")  # fmt: skip
        if res.get("conditions"):
            lines.append(f"| {path.name} | not established: {res['conditions'].split(':')[0]} "
                         "| – | – | – | – |")  # fmt: skip
            continue
        cold, rss = _int8_start(path)
        lines.append(f"| {path.name} | {_best_ratio(rows, ok, 1, 3.0)} | "
                     f"{_best_ratio(rows, ok, 32, 5.0)} | {cold} | {rss} | "
                     f"{how}, {res['created'][:10]} |")  # fmt: skip
    return "\n".join(lines)


def device_checks_table() -> str:
    """The on-device check of every variant, per host that committed one."""
    out = []
    for path in sorted(RESULTS.glob("*/device_checks.json")):
        res = _load(path)
        out.append(f"**{res['cpu']} ({res['isa']})**, `{path.relative_to(ROOT)}`: {res['what']}; "
                   f"probe {res['probe']} images. All variants first use {res['all_first_use_s']} s, "
                   f"cached {res['all_cached_s']} s.")  # fmt: skip
        out += ["", "| variant | here | image cos | text cos | top-1 | batch drift | invariant | s |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in res["variants"]:
            out.append(f"| {r['variant']} | {r['state']} | {_f(r['image_cosine_mean'])} | "
                       f"{_f(r['text_cosine_mean'])} | {_f(r['top1_agreement'], pct=True)} | "
                       f"{_f(r['batch_drift'], 7)} | {r['batch_invariant']} | {_f(r['seconds'], 2)} |")  # fmt: skip
        out.append("")
    return "\n".join(out).rstrip()


def main_job_table() -> str:
    """The quick start's own result (``benchmarks/results/main_job.json``)."""
    res = _load(RESULTS / "main_job.json")
    t = res["times"]
    start = "inherit" if res.get("inherit") else "random init"
    rows = [("teacher", res["teacher"]["train_s"], res["teacher"]["eval"]),
            (f"student, {start} + `{res['losses']}`", t["distill_s"], res["student"]["eval"]),
            (f"student, {start}, no distillation loss", t["no_kd_s"], res["student_no_kd"]["eval"])]  # fmt: skip
    out = [f"{res['steps']:,} steps × {res['batch_size']} each; 64-way zero-shot, seen / held-out "
           "compositions (`benchmarks/results/main_job.json`).", "",
           "| model | train s | seen | held-out | held-out, 8 shape prompts |", "|---|---|---|---|---|"]  # fmt: skip
    for name, secs, ev in rows:
        out.append(f"| {name} | {secs:.0f} | {ev['seen']:.1f} % | {ev['held_out']:.1f} % | "
                   f"{ev['held_out_shape']:.1f} % |")  # fmt: skip
    be = res["bundle_eval"]
    out.append(f"| the student's bundle ({res['variant']['id']}) on {be['n_images']} held-out PNGs | – | – | "
               f"{be['held_out']:.1f} % | {be['held_out_shape']:.1f} % |")  # fmt: skip
    if "kd_effect" in res:
        d = res["kd_effect"]
        out += ["", f"Distillation's effect at equal steps (one seed): seen {d['seen']:+.1f}, held-out "
                f"{d['held_out']:+.1f}, held-out shape {d['held_out_shape']:+.1f} points."]  # fmt: skip
    if "total_s" in t and "host" in res:
        run = "cached teacher" if res["teacher"].get("was_cached") else "first run, teacher trained and its embeddings computed"
        out += ["", f"Whole job: {t['total_s']:.0f} s wall ({t['total_s'] / 60:.1f} min; {run}: teacher "
                f"{t['teacher_s']:.0f} s + embeddings {t['teacher_cache_s']:.0f} s) on a {res['host']['cores']}-core "
                f"{res['host']['cpu']} ({res['host']['isa']})."]  # fmt: skip
    return "\n".join(out)


def _distill_block(res: dict, head: tuple[str, ...]) -> list[str]:
    out = ["| student | seen | held-out | held-out shape |", "|---|---|---|---|"]
    for s in (s for s in res["summary"] if s["row"] in head):
        out.append(f"| {s['row']} (`{s['losses']}`) | " + " | ".join(
            f"{s[k]['mean']:.1f} ± {s[k]['half_range']:.1f}" for k in ("seen", "held_out", "held_out_shape")) + " |")  # fmt: skip
    out += ["", "| target | measured | met |", "|---|---|---|"]
    for v in res.get("targets", []):
        met = "yes" if v["met"] else f"no ({v['gap']:+.1f})"
        out.append(f"| {v['target']} | {v['measured']} | {met} |")
    return out


def distill_table() -> str:
    """Headline rows of the newest ``benchmarks/results/<host>/distill_bench.json`` (and of the
    ``distill_bench_*.json`` runs beside it, e.g. the 600-step rows)."""
    found = [(_load(p), p) for p in sorted(RESULTS.glob("*/distill_bench.json"))]
    if not found:
        return "(no distillation benchmark results yet: `python -m benchmarks.distill_bench`)"
    res, path = max(found, key=lambda x: x[0].get("date", ""))
    st, te = res["settings"], res["teacher"]
    head = ("no-kd", "fd", "fd+icl+crd", "half: manual inherit", "half: auto inherit")

    def teacher_line(te: dict) -> str:
        # Files written before DATA_VERSION was recorded used data v1.
        return (f"Teacher (procedural data v{te.get('data_version', 1)}): {te['steps']} steps × "
                f"{te['batch_size']}, trained once in {te['train_s'] / 60:.0f} min on this 2-core CPU: "
                f"seen {te['eval']['seen']:.1f} %, held-out {te['eval']['held_out']:.1f} %, held-out "
                f"shape {te['eval']['held_out_shape']:.1f} %.")  # fmt: skip

    out = [f"{st['steps']} student steps × batch {st['batch_size']}, seeds {st['seeds']}, mean ± half-range "
           f"(`{path.relative_to(ROOT).as_posix()}`; every row in [docs/distill.md](docs/distill.md)). "
           + teacher_line(te), ""]  # fmt: skip
    out += _distill_block(res, head)
    for extra in sorted(path.parent.glob("distill_bench_*.json")):
        more = _load(extra)
        out += ["", f"{more['settings']['steps']} steps × batch {more['settings']['batch_size']}, seeds "
                f"{more['settings']['seeds']} (`{extra.relative_to(ROOT).as_posix()}`)"
                + ("." if more["teacher"]["eval"] == te["eval"] else ". " + teacher_line(more["teacher"])), ""]  # fmt: skip
        out += _distill_block(more, head)
    return "\n".join(out)


def settings_table() -> str:
    sys.path.insert(0, str(ROOT))
    from edgeclip.settings import markdown_table

    return markdown_table()


def host_speed() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    from readme_hosts import host_speed as render

    return render()


def index_speed() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    from readme_hosts import index_speed as render

    return render()


def serve_towers() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    from readme_hosts import serve_towers as render

    return render()


BLOCKS = {"backends": backends_table, "speed": speed_summary, "host-speed": host_speed,
          "targets": targets_table,
          "device-checks": device_checks_table, "index-speed": index_speed,
          "main-job": main_job_table, "distill": distill_table, "settings": settings_table}  # fmt: skip
#: every file with generated blocks, and its blocks
FILES = {README: BLOCKS, ROOT / "docs" / "serve.md": {"serve-towers": serve_towers}}


def render(text: str, blocks: dict = BLOCKS, where: str = "README.md") -> str:
    for name, make in blocks.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{where} has no <!-- generated:{name} --> block")
        body = make()
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = ap.parse_args(argv)
    stale = []
    for path, blocks in FILES.items():
        where = path.relative_to(ROOT).as_posix()
        current = path.read_text()
        fresh = render(current, blocks, where)
        if fresh != current:
            stale.append(where)
            if not args.check:
                path.write_text(fresh)
    if args.check and stale:
        print(f"{', '.join(stale)} out of date: run `python scripts/render_readme.py`",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
