"""Photo search over HTTP (``edgeclip serve MODEL --index DB``): latency of ``/v1/search`` and
of ``/v1/photos/ID`` thumbnails, one client on loopback.

    python -m benchmarks.serve_search [--work DIR] [--requests 40]

The index holds the 480 procedural pictures of ``benchmarks/search_quality.py`` (its trained
model) and 16 camera-sized JPEGs (12 MP, q92, ``benchmarks/index_data.py``), whose thumbnails
are what a phone's grid asks for. Each search is checked against ``Index.search`` in process
(same paths, scores to 1e-5). Results: ``benchmarks/results/<host>/serve_search.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.hosts import write_result
from benchmarks.index_data import camera_tree
from benchmarks.index_model import cached_bundle
from benchmarks.search_quality import STEPS, shapes_tree
from benchmarks.serve_load import Server, _free_port, host_info

QUERIES = [f"a photo of a {c} {s}" for c in ("red", "blue", "green", "white")
           for s in ("circle", "square", "ring", "cross")]  # fmt: skip


def _get(server: Server, path: str) -> tuple[int, bytes, float]:
    t = time.perf_counter()
    status, body = server.get(path)
    return status, body, (time.perf_counter() - t) * 1000


def _stats(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "max_ms": round(max(ms), 2)}  # fmt: skip


def _searches(server: Server, ix: Any, n: int) -> tuple[list[float], list[int]]:
    times, ids = [], []
    for i in range(n):
        q = QUERIES[i % len(QUERIES)]
        status, body, ms = _get(server, "/v1/search?" + urllib.parse.urlencode({"q": q, "k": 20}))
        if status != 200:
            raise SystemExit(f"/v1/search answered {status}: {body[:300]!r}")
        data = json.loads(body)["data"]
        want = ix.search(q, k=20)
        if [d["path"] for d in data] != [h.path for h in want] or not np.allclose(
                [d["score"] for d in data], [h.score for h in want], atol=1e-5):  # fmt: skip
            raise SystemExit(f"the server's results for {q!r} differ from Index.search in process")
        times.append(ms)
        ids += [int(d["photo"].rsplit("/", 1)[1]) for d in data]
    return times, ids


def _thumbnails(server: Server, ids: list[int], n: int, size: int) -> list[float]:
    times = []
    for i in range(n):
        status, body, ms = _get(server, f"/v1/photos/{ids[i % len(ids)]}?size={size}")
        if status != 200 or not body.startswith(b"\xff\xd8"):
            raise SystemExit(f"/v1/photos answered {status}")
        times.append(ms)
    return times


def _camera_ids(server: Server) -> list[int]:
    """Ids of the camera JPEGs: a search for their folder's photos ("under")."""
    camera = server.camera_dir  # type: ignore[attr-defined]
    q = urllib.parse.urlencode({"q": "a photo", "k": 16, "under": str(camera)})
    data = json.loads(server.get("/v1/search?" + q)[1])["data"]
    return [int(d["photo"].rsplit("/", 1)[1]) for d in data]


def measure(work: Path, n: int) -> dict[str, Any]:
    from edgeclip.index import Index

    bundle = cached_bundle(STEPS)
    shapes_tree(work / "shapes")
    camera = work / "camera"
    camera_tree(camera, 16)
    db = work / "photos.db"
    with Index(db, bundle) as ix:
        ix.update([work / "shapes", camera])
        server = Server(bundle, _free_port(), ["--index", str(db)], work / "serve.log")
        server.camera_dir = camera  # type: ignore[attr-defined]
        try:
            _get(server, "/v1/search?q=warm")  # the model loads on the first query
            search_ms, ids = _searches(server, ix, n)
            small = _thumbnails(server, ids, n, 256)
            big = _thumbnails(server, _camera_ids(server), n, 256)
        finally:
            server.stop()
        photos = len(ix)
    return {"photos": photos, "search_k20": _stats(search_ms),
            "thumbnail_256_of_96px_png_jpeg": _stats(small),
            "thumbnail_256_of_12mp_jpeg": _stats(big)}  # fmt: skip


def render_md(res: dict[str, Any]) -> str:
    host, m = res["host"], res["measured"]
    rows = [("`/v1/search`, k = 20", m["search_k20"]),
            ("`/v1/photos/ID?size=256` of a 96 px picture", m["thumbnail_256_of_96px_png_jpeg"]),
            ("`/v1/photos/ID?size=256` of a 12 MP JPEG", m["thumbnail_256_of_12mp_jpeg"])]  # fmt: skip
    lines = [f"# `edgeclip serve --index`: {host['label']}", "",
             f"{host['cpu']['cpu']}, {host['cpus']} CPUs. {m['photos']} photos indexed; one "
             "client on loopback, a new connection per request, one after another; every search "
             "equal to `Index.search` in process.", "",
             "| request | n | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |" for name, s in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None, help="where the trees and index go (default: temp)")
    ap.add_argument("--requests", type=int, default=40, help="requests of each kind")
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-search-"))
    work.mkdir(parents=True, exist_ok=True)
    res = {"what": "edgeclip serve --index latency", "host": host_info(),
           "measured": measure(work, args.requests)}  # fmt: skip
    write_result("serve_search", res, render_md(res), args.out_dir)
    return res


if __name__ == "__main__":
    main()
