"""Resident memory of ``edgeclip serve`` by tower: text-only traffic, images, ``--image-idle-ttl``.

    python -m benchmarks.serve_memory [--bundle DIR] [--work DIR]

Two servers (worker-subprocess mode) on the same bundle, memory read from ``/health`` (the
server's and the worker's resident sets, from /proc):

* ``--preload``: both towers open from the start, as every load did before towers opened on
  demand; then 32 texts (search queries) only.
* on demand with ``--image-idle-ttl``: 32 texts (the text tower alone opens), then 16 photo-sized
  JPEGs (the image tower opens), then no image for the TTL (the worker is replaced by one holding
  the text tower), then the 32 texts again.

Without ``--bundle`` it builds the TinyCLIP-8M-shaped random bundle (memory does not depend on
the weights' values). Results go to ``benchmarks/results/<host>/serve_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.hosts import write_result
from benchmarks.serve_load import (
    TEXTS,
    Server,
    _free_port,
    build_bundle,
    host_info,
    sample_images,
)

IMAGE_TTL_S = 2.0


def _post(server: Server, body: dict[str, Any]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request("POST", "/v1/embeddings", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"edgeclip serve answered {r.status}: {data[:300]!r}")
    finally:
        conn.close()


def _health(server: Server) -> dict[str, Any]:
    return json.loads(server.get("/health")[1])


def _point(server: Server, step: str) -> dict[str, Any]:
    h = _health(server)
    mb = {k: None if v is None else round(v / 1e6, 1) for k, v in h["memory"].items()}
    return {"step": step, "towers": h["towers"], "server_mb": mb["server"],
            "worker_mb": mb["worker"], "total_mb": mb["total"], "worker_pid": h["worker_pid"]}  # fmt: skip


def _variant(server: Server) -> str:
    return json.loads(server.get("/v1/models")[1])["data"][0]["variant"]


def _texts() -> dict[str, Any]:
    return {"input": (TEXTS * 2)[:32]}


def _images() -> dict[str, Any]:
    uris = ["data:image/jpeg;base64," + base64.b64encode(b).decode() for b in sample_images(16)]
    return {"input": uris, "modality": "image"}


def preloaded(bundle: Path, work: Path) -> list[dict[str, Any]]:
    server = Server(bundle, _free_port(), [], work / "serve-preload.log")
    try:
        points = [_point(server, "preloaded (both towers)")]
        _post(server, _texts())
        points.append(_point(server, "after 32 texts"))
        return points
    finally:
        server.stop()


def on_demand(bundle: Path, work: Path) -> list[dict[str, Any]]:
    args = ["--image-idle-ttl", f"{IMAGE_TTL_S:g}"]
    server = Server(bundle, _free_port(), args, work / "serve-towers.log", preload=False)
    try:
        points = [_point(server, "started, nothing loaded")]
        _post(server, _texts())
        points.append(_point(server, "after 32 texts"))
        _post(server, _images())
        points.append(_point(server, "after 16 JPEGs (640x480)"))
        for _ in range(300):  # bounded: 30 s
            if _health(server)["towers"] == ["text"]:
                break
            time.sleep(0.1)
        points.append(_point(server, f"no image for {IMAGE_TTL_S:g} s"))
        _post(server, _texts())
        points.append(_point(server, "after 32 texts again"))
        points[-1]["last_unload"] = _health(server)["last_unload"]
        points[-1]["variant"] = _variant(server)
        return points
    finally:
        server.stop()


def render_md(result: dict[str, Any]) -> str:
    host = result["host"]
    lines = [
        f"# `edgeclip serve` memory by tower: {host['label']}",
        "",
        f"{host['cpu']['cpu']} ({', '.join(host['cpu']['isa']) or 'no AVX'}), {host['cpus']} CPUs, "
        f"onnxruntime {host['onnxruntime']}. Bundle `{result['bundle']}` (TinyCLIP-8M shape), "
        f"variant `{result['on_demand'][-1]['variant']}` (the auto choice), worker subprocess. "
        "Resident sets from /proc, in MB (10^6 bytes).",
        "",
        "| server | step | towers open | server MB | worker MB | total MB |",
        "|---|---|---|---|---|---|",
    ]
    for mode, points in (("--preload", result["preloaded"]),
                         ("on demand, --image-idle-ttl 2", result["on_demand"])):  # fmt: skip
        for p in points:
            lines.append(f"| {mode} | {p['step']} | {' + '.join(p['towers']) or 'none'} | "
                         f"{p['server_mb']} | {p['worker_mb'] or 0} | {p['total_mb']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None, help="default: build the 8M-shaped one in --work")
    ap.add_argument("--work", default=None, help="where to build/keep the bundle (default: temp)")
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle) if args.bundle else build_bundle(work)
    result = {"what": "edgeclip serve resident memory by tower", "host": host_info(),
              "bundle": bundle.name, "image_idle_ttl_s": IMAGE_TTL_S,
              "preloaded": preloaded(bundle, work), "on_demand": on_demand(bundle, work)}  # fmt: skip
    write_result("serve_memory", result, render_md(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
