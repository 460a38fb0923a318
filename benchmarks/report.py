"""Results → console table, JSON, CSV, Markdown and PNG plots (merging devices: merge.py)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

SCHEMA = "edgeclip-bench/1"
#: the plots ``write_all`` may write (latency.png needs batch-1 rows)
PLOT_FILES = ("pairs_per_s.png", "latency.png")


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        # small values (latencies in ms, seconds) need more digits than rates
        digits = nd if abs(x) >= 10 else max(nd, 2) if abs(x) >= 1 else max(nd, 3)
        return f"{x:,.{digits}f}"
    return str(x)


def add_ratios(results: dict[str, Any]) -> None:
    """Set ``vs_baseline`` on each throughput row: its pairs/s over the baseline's at that batch."""
    base_id = results.get("baseline")
    base = {
        (r["batch_size"], r.get("device", "cpu")): r["pairs_per_s"]
        for r in results.get("throughput", [])
        if r["variant"] == base_id
    }
    for r in results.get("throughput", []):
        b = base.get((r["batch_size"], r.get("device", "cpu")))
        r["vs_baseline"] = r["pairs_per_s"] / b if b else None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += [
        "| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def _header(results: dict[str, Any]) -> list[str]:
    m = results.get("macs") or {}
    dev = results.get("device_label", "?")
    out = [f"# edgeclip bench: {results.get('model', {}).get('name', '?')} on {dev}", ""]
    if m:
        out.append(
            f"MACs: image {m['image_macs'] / 1e9:.3f} G + text {m['text_macs'] / 1e9:.3f} G = "
            f"**{m['pair_macs'] / 1e9:.3f} G a pair**, from the {m.get('source', 'graph')}; "
            f"params: image {m['image_params'] / 1e6:.2f} M + text {m['text_params'] / 1e6:.2f} M = "
            f"{m['params'] / 1e6:.2f} M."
        )
    s = results.get("settings", {})
    out.append(
        f"Threads: {s.get('threads') or 'runtime default'}; pairs/s = 1/(1/images_per_s + 1/texts_per_s), "
        f"towers timed separately on preprocessed inputs ({s.get('warmup')} warm-up, ≥{s.get('repeats')} "
        f"timed calls, ≥{s.get('min_time')} s).{' QUICK smoke run: not stable numbers.' if s.get('quick') else ''}"
    )
    if results.get("cpu_steal_share") is not None:
        out.append(f"CPU time taken by the hypervisor (steal) during the run: "
                   f"{results['cpu_steal_share']:.0%}.")  # fmt: skip
    if results.get("interrupted"):
        out.append("**Interrupted: partial results.**")
    return out


def _throughput(results: dict[str, Any]) -> list[str]:
    head = ["variant", "device", "batch", "images/s", "texts/s", "pairs/s",
            f"× {results.get('baseline') or 'baseline'}", "note"]  # fmt: skip
    rows = [[r["variant"], r.get("device", "cpu"), r["batch_size"], r["images_per_s"],
             r["texts_per_s"], r["pairs_per_s"],
             f"{r['vs_baseline']:.2f}" if r.get("vs_baseline") else "–", r.get("note") or ""]
            for r in results.get("throughput", [])]  # fmt: skip
    return ["", "## Throughput", "", _table(head, rows)]


def _latency(results: dict[str, Any]) -> list[str]:
    lat = [r for r in results.get("throughput", []) if r.get("latency")]
    if not lat:
        return []
    head = ["variant", "device", "image p50", "image p95", "image p99", "text p50", "text p95",
            "text p99", "n"]  # fmt: skip
    rows = [[r["variant"], r.get("device", "cpu")]
            + [r["latency"][t][k] for t in ("image", "text") for k in ("p50_ms", "p95_ms", "p99_ms")]
            + [r["latency"]["image"]["n"]] for r in lat]  # fmt: skip
    return ["", "## Latency at batch 1 (ms)", "", _table(head, rows)]


def _memory(results: dict[str, Any]) -> list[str]:
    if not results.get("memory"):
        return []
    head = ["variant", "files (MB)", "peak RSS (MiB)", "cold start (s)", "import", "load",
            "first result", "process wall (s)"]  # fmt: skip
    keys = ("peak_rss_mib", "cold_start_s", "import_s", "load_s", "first_result_s", "process_wall_s")
    rows = [[r["variant"], r.get("size_mb")]
            + ([r.get(k) for k in keys] if not r.get("error") else ["error: " + r["error"]] + [""] * 5)
            for r in results["memory"]]  # fmt: skip
    return ["", "## Memory and cold start (fresh process each)", "", _table(head, rows)]


def _e2e(results: dict[str, Any]) -> list[str]:
    if not results.get("e2e"):
        return []
    head = ["variant", "batch", "images/s end-to-end", "model-only images/s",
            "preprocess-only images/s"]  # fmt: skip
    rows = [[r["variant"], r["batch_size"], r["images_per_s"], r.get("model_images_per_s"),
             r.get("preprocess_images_per_s")] for r in results["e2e"]]  # fmt: skip
    return ["", "## End to end from JPEG files (decode + preprocess + image tower)", "",
            _table(head, rows)]  # fmt: skip


def _roofline(results: dict[str, Any]) -> list[str]:
    from .roofline import fractions

    rows = fractions(results)
    if not rows:
        return []
    pk = results["roofline"]["peaks"]
    title = (f"## Against the roofline (GEMM peak {pk['fp32_gmac_s']} GMAC/s fp32, "
             f"{pk['int8_gmac_s']} GMAC/s int8; {pk['kernels']}, "
             f"{pk['threads'] or 'default'} threads; MACs at each row's text length)")
    head = ["variant", "batch", "text tokens", "bound by", "achieved GMAC/s", "peak GMAC/s",
            "fraction", "roofline pairs/s"]  # fmt: skip
    body = [[r["variant"], r["batch_size"], r.get("text_tokens") or "–", r["peak"],
             r["achieved_gmac_s"], r["peak_gmac_s"], r["fraction"], r["roofline_pairs_per_s"]]
            for r in rows]  # fmt: skip
    return ["", title, "", _table(head, body)]


def _accuracy(results: dict[str, Any]) -> list[str]:
    acc = results.get("accuracy")
    if not acc:
        return []

    def pct(x):
        return f"{100 * x:.2f} %" if x is not None else "–"

    rows = [[r["variant"], pct(r["top1"]), pct(r["top5"]),
             pct(r["top1_agreement"]) if r.get("top1_agreement") is not None else "–",
             r["n_images"]] for r in acc["rows"]]  # fmt: skip
    title = (f"## Zero-shot accuracy ({acc['n_classes']} classes, {acc['n_files']} files, "
             f"{acc['skipped']} unreadable skipped, templates {acc['templates']})")  # fmt: skip
    return ["", title, "",
            _table(["variant", "top-1", "top-5", "top-1 agreement", "images"], rows)]  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The whole run as Markdown: header, throughput, latency, memory, end-to-end, accuracy."""
    out = []
    for section in (_header, _throughput, _latency, _roofline, _memory, _e2e, _accuracy):
        out += section(results)
    if results.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(out) + "\n"


CSV_FIELDS = [
    "device_label",
    "variant",
    "backend",
    "precision",
    "device",
    "batch_size",
    "images_per_s",
    "texts_per_s",
    "pairs_per_s",
    "vs_baseline",
    "image_p50_ms",
    "image_p95_ms",
    "image_p99_ms",
    "text_p50_ms",
    "text_p95_ms",
    "text_p99_ms",
    "peak_rss_mib",
    "cold_start_s",
    "size_mb",
    "note",
]


def csv_text(results_list: list[dict[str, Any]]) -> str:
    """One CSV row per throughput row (memory and latency joined by variant)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for res in results_list:
        mem = {r["variant"]: r for r in res.get("memory", [])}
        for r in res.get("throughput", []):
            row = {k: r.get(k) for k in CSV_FIELDS}
            row["device_label"] = res.get("device_label")
            row["device"] = r.get("device", "cpu")
            for t in ("image", "text"):
                for k in ("p50_ms", "p95_ms", "p99_ms"):
                    row[f"{t}_{k}"] = (r.get("latency") or {}).get(t, {}).get(k)
            mr = mem.get(r["variant"], {})
            for k in ("peak_rss_mib", "cold_start_s", "size_mb"):
                row[k] = mr.get(k)
            w.writerow(row)
    return buf.getvalue()


def _bar_plot(
    path: Path, groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(series), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, n / 2)), 4.2))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        vals = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, vals, width, label=name)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in vals], fontsize=7)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """pairs_per_s.png (per variant × batch size) and latency.png (batch-1 p50/p95/p99)."""
    rows = results.get("throughput", [])
    if not rows:
        return []

    def key(r: dict[str, Any]) -> str:
        return r["variant"] + ("" if r.get("device", "cpu") == "cpu" else f" [{r['device']}]")

    groups = list(dict.fromkeys(key(r) for r in rows))
    batches = sorted({r["batch_size"] for r in rows})
    series = {
        f"batch {b}": [
            next((r["pairs_per_s"] for r in rows if key(r) == g and r["batch_size"] == b), None)
            for g in groups
        ]
        for b in batches
    }
    written = [out_dir / "pairs_per_s.png"]
    _bar_plot(
        written[0],
        groups,
        series,
        "pairs/s",
        f"{results.get('model', {}).get('name', '')} on {results.get('device_label', '')}",
    )
    lat = [r for r in rows if r.get("latency")]
    if lat:
        lg = [key(r) for r in lat]
        ls = {
            f"{t} {k[:3]}": [r["latency"][t][k] for r in lat]
            for t in ("image", "text")
            for k in ("p50_ms", "p95_ms", "p99_ms")
        }
        written.append(out_dir / "latency.png")
        _bar_plot(written[1], lg, ls, "ms per call (batch 1)", "latency at batch 1")
    return written


def replace_atomically(path: Path, write: Any) -> None:
    """``write(tmp)`` to a hidden file beside ``path``, then rename it over ``path``: a second
    Ctrl-C (or a full disk) never leaves a half-written file, only the old one or the new."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically (see ``replace_atomically``)."""
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_all(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write results.json, results.csv, results.md and the plots; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    add_ratios(results)
    if results.get("roofline"):
        from .roofline import fractions

        results["roofline"]["rows"] = fractions(results)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    write_text(paths["json"], json.dumps(results, indent=1, default=str) + "\n")
    write_text(paths["csv"], csv_text([results]))
    write_text(paths["md"], markdown(results))
    try:
        for p in plots(results, out):
            paths[p.stem] = p
    except ImportError:  # matplotlib is optional on small devices: tables still get written
        print("note: plots skipped: `pip install matplotlib` to get the PNGs")
    for name in PLOT_FILES:  # an earlier run's plot (say latency.png) must not outlive its run
        if out / name not in paths.values():
            (out / name).unlink(missing_ok=True)
    return paths


def console_table(results: dict[str, Any]) -> str:
    """A compact fixed-width throughput table for the terminal."""
    lines = [
        f"{'variant':<22}{'dev':<6}{'batch':>6}{'images/s':>11}{'texts/s':>11}{'pairs/s':>10}{'×base':>7}"
    ]
    for r in results.get("throughput", []):
        ratio = f"{r['vs_baseline']:.2f}" if r.get("vs_baseline") else "–"
        lines.append(
            f"{r['variant']:<22}{r.get('device', 'cpu'):<6}{r['batch_size']:>6}{r['images_per_s']:>11,.1f}"
            f"{r['texts_per_s']:>11,.1f}{r['pairs_per_s']:>10,.1f}{ratio:>7}"
        )
    return "\n".join(lines)
