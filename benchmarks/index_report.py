"""The Markdown report of ``benchmarks/index_bench.py`` (``index_bench.md``) from its JSON result."""

from __future__ import annotations

from typing import Any


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Photo index benchmark ({r['host']})", "", f"CPU: {r['cpu']}, {r['cores']} cores; "
             f"{r['date']}; onnxruntime {r['versions'].get('onnxruntime')}, usearch {r['versions'].get('usearch')}.", ""]
    d = r["draft"]
    models = list(d["summary"])
    thumb = "x".join(map(str, d.get("thumbnail", [])))
    thumb = f", {thumb} EXIF thumbnail q85" if thumb else ", no EXIF thumbnail"
    lines += [f"## JPEG decode paths (12 MP photos from skimage.data, q92{thumb})", "",
              "| photo | KB | full decode ms | draft decode ms | preview decode ms | "
              + " | ".join(f"draft cos {m} | preview cos {m}" for m in models) + " |",
              "|---|---|---|---|---|" + "---|---|" * len(models)]
    for row in d["photos"]:
        lines.append(f"| {row['photo']} | {row['jpeg_kb']} | {row['full_decode_ms']} | {row['draft_decode_ms']} | "
                     f"{row.get('preview_decode_ms', '–')} | "
                     + " | ".join(f"{row[f'cos_{m}']} | {row.get(f'preview_cos_{m}', '–')}" for m in models) + " |")
    lines += ["", "| model | draft vs full cos mean / min | preview vs full cos mean / min | JPEG re-save q95 cos | different photos cos |",
              "|---|---|---|---|---|"]
    for m, s in d["summary"].items():
        lines.append(f"| {m} | {s['draft_vs_full_cos_mean']} / {s['draft_vs_full_cos_min']} | "
                     f"{s.get('preview_vs_full_cos_mean', '–')} / {s.get('preview_vs_full_cos_min', '–')} | "
                     f"{s['jpeg_resave_q95_cos_mean']} | {s['different_photos_cos_mean']} |")
    steal = r.get("e2e_cpu_steal_share")
    lines += ["", "## End-to-end (12 MP JPEG files -> stored vectors) vs model only", ""]
    if steal is not None:
        lines += [f"CPU time taken by the hypervisor (steal) during these runs: {steal:.0%}.", ""]
    lines += [
              "| variant | batch | model only img/s | end-to-end img/s | e2e / model | with --previews img/s | previews / model | without draft img/s |",
              "|---|---|---|---|---|---|---|---|"]
    for e in r["e2e"]:
        s = e["images_per_s"]
        pv = f"{s['end_to_end_previews']} | {e['previews_over_model_only']:.1%}" if "end_to_end_previews" in s else "– | –"
        lines.append(f"| {e['variant']} | {e['batch_size']} | {s['model_only']} | {s['end_to_end']} | "
                     f"{e['end_to_end_over_model_only']:.1%} | {pv} | {s['end_to_end_no_draft']} |")
    if all("core_ms_per_image" in e for e in r["e2e"]):
        lines += ["", "CPU time per image (all threads; core-ms), how busy the cores were, and the "
                  "ratio the cores allow (model core-ms over the path's core-ms):", "",
                  "| variant | model only | end-to-end | --previews | cores busy: model / e2e / previews | "
                  "bound e2e / previews |", "|---|---|---|---|---|---|"]
        for e in r["e2e"]:
            c, b, cap = e["core_ms_per_image"], e["cpu_busy_share"], e["cpu_bound_ratio"]
            lines.append(f"| {e['variant']} | {c['model_only']} | {c['end_to_end']} | {c['end_to_end_previews']} | "
                         f"{b['model_only']:.0%} / {b['end_to_end']:.0%} / {b['end_to_end_previews']:.0%} | "
                         f"{cap['end_to_end']:.1%} / {cap['end_to_end_previews']:.1%} |")
    if "build" in r:
        b = r["build"]
        lines += ["", f"## Build ({b['images']} distinct {b['size']} JPEGs from the same photos, {b['variant']})", "",
                  f"First build {b['build_s']} s ({b['build_images_per_s']} images/s); unchanged re-index "
                  f"{b['unchanged_reindex_s']} s = {b['reindex_over_build']:.2%} of the build."]  # fmt: skip
    if "search" in r:
        lines += ["", "## Search (synthetic 512-d vectors, k=10, 200 queries, fresh process)", "",
                  "| vectors | exact p50 / p95 ms | HNSW p50 / p95 ms | recall@10 | HNSW build s | peak RSS MiB | anon RSS MiB | files MiB |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in r.get("search", []):
        a = s.get("ann")
        ann = f"{a['p50_ms']} / {a['p95_ms']}" if a else "–"
        lines.append(f"| {s['vectors']:,} | {s['exact']['p50_ms']} / {s['exact']['p95_ms']} | {ann} | "
                     f"{a['recall_at_10'] if a else '–'} | {s['ann_build_s'] or '–'} | {s['memory_mb'].get('VmHWM')} | "
                     f"{s['memory_mb'].get('RssAnon')} | {s['files_mb']} |")
    return "\n".join(lines) + "\n"
