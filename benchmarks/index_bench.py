"""Photo-index benchmark: JPEG draft cost, end-to-end vs model-only speed, build and re-index
time, search latency / recall / memory at 10k, 100k and 1M vectors.

    .venv/bin/python -m benchmarks.index_bench [--work DIR] [--build-images 10000] [--ann-1m]

Writes ``benchmarks/results/<host>/index_bench.{json,md}``. Speed uses the TinyCLIP-8M-shaped
random bundle (speed does not depend on the weights; its fan-in init keeps embeddings
input-sensitive); the draft cosine is also measured on the CLIP trained on shapes
(``benchmarks/index_model.py``). Needs torch (to build the bundles) and scikit-image (photos).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import index_data
from benchmarks.hosts import cpu_ticks, steal_share
from benchmarks.index_report import to_markdown

RESULTS = Path(__file__).resolve().parent / "results"
BUILD_SIZE = (800, 600)


def host_name() -> str:
    """The results folder of this machine (``benchmarks.hosts.host_label``)."""
    from benchmarks.hosts import host_label

    return host_label()


def _model_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), platform.processor())


# -- models -----------------------------------------------------------------------------------
def tinyclip_bundle(work: Path) -> Path:
    """The TinyCLIP-8M-shaped random bundle with an ONNX INT8 variant (built once)."""
    from converters.add_variants import add_variants
    from converters.bundle_writer import convert
    from converters.fixtures import write_random_checkpoint
    from edgeclip.bundle import Bundle

    out = work / "tinyclip-8m-bundle"
    if Bundle.is_bundle(out) and any(v["id"] == "onnx-int8" for v in json.loads((out / "manifest.json").read_text())["variants"]):
        return out
    ckpt = write_random_checkpoint(work / "tinyclip-8m-ckpt", arch="tinyclip-8m", fmt="hf", seed=0)
    convert(ckpt, out, name="tinyclip-8m-fixture", overwrite=True, progress=False)
    add_variants(out, ckpt, backends="onnx", precisions="int8", n_calib=16, n_eval=16)
    return out


def _load(bundle: Path, precision: str = "auto") -> Any:
    import edgeclip

    # verify=False: the random fixture has no probe set worth running; speed is all we want
    return edgeclip.load(bundle, backend="onnx", precision=precision, threads=os.cpu_count(), verify=False)


# -- 1. draft vs full decode ----------------------------------------------------------------
def bench_draft(models: dict[str, Any]) -> dict[str, Any]:
    """Per photo: decode ms (full, draft, embedded preview) and cosine to the full decode."""
    from edgeclip.index.pipeline import decode

    rows = []
    cos: dict[str, dict[str, list[float]]] = {m: {"draft": [], "preview": [], "resave": []} for m in models}
    full_vecs = {name: [] for name in models}
    for name in index_data.PHOTOS:
        data = index_data.camera_jpeg(name, thumbnail=index_data.PHONE_THUMBNAIL)
        resaved = _resave(data, 95)
        row: dict[str, Any] = {"photo": name, "jpeg_kb": len(data) // 1024}
        for label, kw in (("full", {}), ("draft", {"draft_to": 224}), ("preview", {"draft_to": 224, "preview_to": 224})):
            times = []
            for _ in range(3):
                t = time.perf_counter()
                decode(data, "JPEG", **{"draft_to": None, **kw})
                times.append(time.perf_counter() - t)
            row[f"{label}_decode_ms"] = round(1000 * min(times), 1)
        for mname, model in models.items():
            cfg = model.preprocessor.cfg
            target = cfg.get("resize_size") or cfg["image_size"]
            full = _embed(model, data, None)
            for key, raw, kw in (("draft", data, {"draft_to": target}), ("resave", resaved, {"draft_to": None}),
                                 ("preview", data, {"draft_to": target, "preview_to": target})):
                cos[mname][key].append(float(full @ _embed(model, raw, **kw)))
            row[f"cos_{mname}"] = round(cos[mname]["draft"][-1], 6)
            row[f"preview_cos_{mname}"] = round(cos[mname]["preview"][-1], 6)
            full_vecs[mname].append(full)
        rows.append(row)
    summary = {}
    for mname in models:
        v = np.stack(full_vecs[mname])
        sims = v @ v.T
        c = cos[mname]
        summary[mname] = {
            "draft_vs_full_cos_mean": round(float(np.mean(c["draft"])), 6),
            "draft_vs_full_cos_min": round(float(np.min(c["draft"])), 6),
            "preview_vs_full_cos_mean": round(float(np.mean(c["preview"])), 6),
            "preview_vs_full_cos_min": round(float(np.min(c["preview"])), 6),
            "jpeg_resave_q95_cos_mean": round(float(np.mean(c["resave"])), 6),
            "different_photos_cos_mean": round(float(sims[~np.eye(len(v), dtype=bool)].mean()), 4),
        }
    return {"photos": rows, "summary": summary, "thumbnail": list(index_data.PHONE_THUMBNAIL)}


def _embed(model: Any, raw: bytes, draft_to: int | None, preview_to: int | None = None) -> np.ndarray:
    from edgeclip.index.pipeline import decode, embed_pixels

    im = decode(raw, "JPEG", draft_to=draft_to, preview_to=preview_to)
    return embed_pixels(model, model.preprocessor.one(im)[None])[0]


def _resave(data: bytes, quality: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# -- 2. end-to-end vs model-only ------------------------------------------------------------
def bench_e2e(model: Any, paths: list[Path], batch: int, reps: int = 3) -> dict[str, Any]:
    """images/s of the model alone on ready pixels, and of files -> vectors, interleaved.

    ``paths`` carry EXIF thumbnails; only the ``previews`` path decodes them. Each run also
    records the process's CPU time (all threads), hence core-ms per image and how busy the
    cores were: with the cores busy, files -> vectors can be at most model core-ms over
    model + decode core-ms of the model's speed (``cpu_bound_ratio``).
    """
    from edgeclip.index.pipeline import EmbedPipeline, embed_pixels
    from edgeclip.index.walk import FileEntry

    s = model.preprocessor.image_size
    pixels = np.random.default_rng(0).standard_normal((len(paths), 3, s, s)).astype(np.float32)
    entries = [FileEntry(str(p), 0, 0, 0, 0) for p in paths]
    embed_pixels(model, pixels[:batch], batch)  # warm
    paths_kw = {"end_to_end": {"draft": True}, "end_to_end_no_draft": {"draft": False},
                "end_to_end_previews": {"draft": True, "previews": True}}  # fmt: skip
    out: dict[str, list[float]] = {"model_only": [], **{k: [] for k in paths_kw}}
    core_ms: dict[str, list[float]] = {k: [] for k in out}
    busy: dict[str, list[float]] = {k: [] for k in out}

    def record(key: str, t: float, cpu: float, n: int) -> None:
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        out[key].append(n / wall)
        core_ms[key].append(1000 * cpu / n)
        busy[key].append(cpu / (wall * (os.cpu_count() or 1)))

    for rep in range(reps):
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(pixels), batch):
            embed_pixels(model, pixels[i : i + batch], batch)
        record("model_only", t, cpu, len(pixels))
        for key, kw in paths_kw.items():
            if key.endswith("no_draft") and rep:
                continue  # once is enough for the slow path
            pipe = EmbedPipeline(model, batch_size=batch, **kw)
            t, cpu = time.perf_counter(), time.process_time()
            n = sum(1 for o in pipe.run(entries) if o.status == "ok")
            assert n == len(entries)
            record(key, t, cpu, n)
    med = {k: round(statistics.median(v), 2) for k, v in out.items()}
    core = {k: round(statistics.median(v), 2) for k, v in core_ms.items()}

    def ratio(key: str) -> float:
        return round(statistics.median(e / m for e, m in zip(out[key], out["model_only"])), 3)

    return {
        "variant": model.variant.id, "batch_size": batch, "images": len(paths),
        "images_per_s": med, "runs": {k: [round(x, 2) for x in v] for k, v in out.items()},
        "end_to_end_over_model_only": ratio("end_to_end"),
        "previews_over_model_only": ratio("end_to_end_previews"),
        "core_ms_per_image": core,
        "cpu_busy_share": {k: round(statistics.median(v), 3) for k, v in busy.items()},
        "cpu_bound_ratio": {k: round(core["model_only"] / core[k], 3) for k in paths_kw},
    }  # fmt: skip


# -- 3. build and unchanged re-index --------------------------------------------------------
def bench_build(bundle: Path, dirs: list[Path], work: Path) -> dict[str, Any]:
    from edgeclip.index import Index

    db = work / "build.db"
    for p in work.glob("build.db*"):
        p.unlink()
    with Index(db, _load(bundle, "fp32")) as ix:
        t = time.perf_counter()
        first = ix.update(dirs)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        again = ix.update(dirs)
        reindex_s = time.perf_counter() - t
    return {
        "images": first.embedded, "size": "x".join(map(str, BUILD_SIZE)), "variant": ix.model.variant.id, "build_s": round(build_s, 1),
        "build_images_per_s": round(first.embedded / build_s, 2), "unchanged_reindex_s": round(reindex_s, 2),
        "reindex_over_build": round(reindex_s / build_s, 4), "reindex_unchanged_count": again.unchanged,
    }  # fmt: skip


# -- 4. search at scale -----------------------------------------------------------------------
def synthetic_index(db: Path, n: int, dim: int = 512) -> dict[str, Any]:
    """An index of ``n`` synthetic vectors (rows with made-up paths), built through the same
    commit path as real indexing, plus its HNSW graph when it is large enough."""
    from edgeclip.index import vectors
    from edgeclip.index.indexer import commit_ops
    from edgeclip.index.library import Index
    from edgeclip.index.walk import FileEntry

    for p in db.parent.glob(db.name + "*"):
        p.unlink()
    ix = Index(db)
    ix.store.set_meta({"fingerprint": "synthetic", "dim": str(dim), "slots": "0", "generation": "1",
                       "model": {"name": "synthetic"}})  # fmt: skip
    chunk = 50_000
    t = time.perf_counter()
    for i in range(0, n, chunk):
        vecs = index_data.clustered_vectors(min(chunk, n - i), dim, seed=1000 + i)
        ops = [("put", FileEntry(f"/photos/{j:07d}.jpg", 1, 1, 0, j), "ok", v, None, None)
               for j, v in zip(range(i, i + len(vecs)), vecs)]  # fmt: skip
        commit_ops(ix, ops)
    fill_s = time.perf_counter() - t
    ann_s = None
    if n >= vectors.ANN_MIN_VECTORS:
        t = time.perf_counter()
        ix.ann.extend(ix.vectors.matrix(ix.committed_slots()))
        ann_s = time.perf_counter() - t
    ix.close()
    return {"fill_s": round(fill_s, 1), "ann_build_s": None if ann_s is None else round(ann_s, 1)}


def _recall(found: list[set], exact: list[set]) -> float:
    return round(float(np.mean([len(a & e) / 10 for a, e in zip(found, exact)])), 4)


def _ef_sweep(ix: Any, queries: np.ndarray, exact: list[set]) -> list[dict[str, Any]]:
    """Recall@10 and latency of graph search at several search breadths (ef)."""
    from edgeclip.index import vectors

    saved, rows = vectors.EF_BY_SIZE, []
    try:
        for ef in (64, 128, 256):
            vectors.EF_BY_SIZE = ((None, ef),)
            lat, found = [], []
            for q in queries:
                t = time.perf_counter()
                found.append({h.path for h in ix.search_vector(q, 10)})
                lat.append(1000 * (time.perf_counter() - t))
            rows.append({"ef": ef, "recall_at_10": _recall(found, exact),
                         "p50_ms": round(float(np.percentile(lat, 50)), 2),
                         "p95_ms": round(float(np.percentile(lat, 95)), 2)})  # fmt: skip
    finally:
        vectors.EF_BY_SIZE = saved
    return rows


def search_worker(db: str, n_queries: int) -> dict[str, Any]:
    """In a fresh process: latency of exact and graph search, recall@10 (and by ef), memory."""
    from edgeclip.index import vectors
    from edgeclip.index.library import Index

    queries = index_data.clustered_vectors(n_queries, 512, seed=999_999)
    out: dict[str, Any] = {}
    with Index(db, readonly=True) as ix:
        results = {}
        for mode in ("exact", "ann") if ix.ann.covered() else ("exact",):
            ix.search_vector(queries[0], 10, exact=mode == "exact")  # open / map
            lat, results[mode] = [], []
            for q in queries:
                t = time.perf_counter()
                hits = ix.search_vector(q, 10, exact=mode == "exact")
                lat.append(1000 * (time.perf_counter() - t))
                results[mode].append({h.path for h in hits})
            out[mode] = {"p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2)}
        if "ann" in results:
            out["ann"]["recall_at_10"] = _recall(results["ann"], results["exact"])
            out["ann"]["ef"] = vectors.expansion_for(ix.ann.covered())
            out["ef_sweep"] = _ef_sweep(ix, queries, results["exact"])
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        out["memory_mb"] = {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmHWM", "RssAnon", "RssFile") if k in status}
        out["files_mb"] = round(sum(p.stat().st_size for p in Path(db).parent.glob(Path(db).name + "*")) / 2**20, 1)
    return out


def bench_search(work: Path, sizes: list[int], ann_1m: bool) -> list[dict[str, Any]]:
    from edgeclip.index import vectors

    rows = []
    for n in sizes:
        db = work / f"search-{n}.db"
        saved = vectors.ANN_MIN_VECTORS
        if n >= 1_000_000 and not ann_1m:
            vectors.ANN_MIN_VECTORS = n + 1  # the 1M graph takes long to build: only on request
        try:
            built = synthetic_index(db, n)
        finally:
            vectors.ANN_MIN_VECTORS = saved
        res = subprocess.run([sys.executable, "-m", "benchmarks.index_bench", "--search-worker", str(db)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append({"vectors": n, **built, **json.loads(res.stdout.strip().splitlines()[-1])})
        print(json.dumps(rows[-1]), flush=True)
        for p in work.glob(db.name + "*"):
            p.unlink()
    return rows


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("onnxruntime", "usearch", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeclip-index-bench"))
    ap.add_argument("--host", default=None, help="results folder name (default: from the CPU)")
    ap.add_argument("--e2e-images", type=int, default=64)
    ap.add_argument("--e2e-reps", type=int, default=5, help="interleaved runs of each path (median)")
    ap.add_argument("--build-images", type=int, default=10_000)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--ann-1m", action="store_true", help="also build the HNSW graph at 1M (long)")
    ap.add_argument("--search-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--only", default="draft,e2e,build,search")
    args = ap.parse_args(argv)
    if args.search_worker:
        print(json.dumps(search_worker(args.search_worker, 200)))
        return {}
    from benchmarks.index_model import trained_bundle

    args.work.mkdir(parents=True, exist_ok=True)
    host = args.host or host_name()
    out_dir = RESULTS / host
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index_bench.json"
    result: dict[str, Any] = dict(host=host, cpu=_model_name(), cores=os.cpu_count(), date=time.strftime("%Y-%m-%d"), versions=_versions(),
                                  load_average=[round(x, 2) for x in os.getloadavg()])
    only = set(args.only.split(","))
    bundle = tinyclip_bundle(args.work)
    if "draft" in only:
        shapes, _ = trained_bundle(args.work / "shapes-model", steps=400)
        result["draft"] = bench_draft({"tinyclip8m_random": _load(bundle, "fp32"), "trained_shapes": _load(shapes, "fp32")})
        print(json.dumps(result["draft"]["summary"]), flush=True)
    if "e2e" in only:
        paths = index_data.camera_tree(args.work / "camera-thumb", args.e2e_images, index_data.PHONE_THUMBNAIL)
        ticks = cpu_ticks()
        result["e2e"] = [bench_e2e(_load(bundle, p), paths, 32, args.e2e_reps) for p in ("fp32", "int8")]
        result["e2e_cpu_steal_share"] = steal_share(ticks)
        print(json.dumps(result["e2e"]), flush=True)
    if "build" in only:
        # 10,000 files in folders of 1,000; the build indexes the first --build-images of them
        tree = args.work / "tree-10000"
        index_data.perturbed_tree(tree, 10_000, BUILD_SIZE)
        dirs = sorted(p for p in tree.iterdir() if p.is_dir())[: max(1, args.build_images // 1000)]
        result["build"] = bench_build(bundle, dirs, args.work)
        print(json.dumps(result["build"]), flush=True)
    if "search" in only:
        result["search"] = bench_search(args.work, [int(s) for s in args.sizes.split(",")], args.ann_1m)
    # Merge into what earlier runs measured (each section can be rerun on its own with --only).
    result = {**(json.loads(path.read_text()) if path.exists() else {}), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    if all(k in result for k in ("draft", "e2e")):
        (out_dir / "index_bench.md").write_text(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
