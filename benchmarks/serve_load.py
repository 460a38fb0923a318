"""Load test of ``edgeclip serve`` on loopback: requests/s and latency percentiles.

    python -m benchmarks.serve_load [--bundle DIR] [--work DIR] [--clients 1,4,16]

It starts ``edgeclip serve`` in a subprocess (the default worker-subprocess mode, model
preloaded), sends text and image embedding requests (one input per request, as Frigate and
Immich send them) from 1, 4 and 16 concurrent keep-alive clients, and compares image
throughput at the highest concurrency with the batched rate of the same variant called in
process (``EdgeClip.encode_image`` on the same encoded images, decoding included). The issue's
target: at 16 clients, at least 80 % of the in-process rate.

Without ``--bundle`` it builds the TinyCLIP-8M-shaped random bundle (speed does not depend on
the weights) in ``--work``. Every run is bounded: ``--requests`` per client count and
``--max-seconds`` per run, whichever comes first. Results go to
``benchmarks/results/<host>/serve_load.{json,md}``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"a photo of a {w} on a {s}" for w in ("cat", "dog", "car", "bird", "boat", "tree")
         for s in ("street", "beach", "table", "field")]  # fmt: skip


def build_bundle(work: Path) -> Path:
    """The TinyCLIP-8M-shaped random bundle (onnx fp32), built once in ``work``."""
    bundle = work / "tinyclip-8m-random"
    if (bundle / "manifest.json").is_file():
        return bundle
    from converters.bundle_writer import convert
    from converters.fixtures import write_random_checkpoint

    ckpt = write_random_checkpoint(work / "ckpt", arch="tinyclip-8m", fmt="hf", seed=0)
    return Path(convert(ckpt, bundle, name="tinyclip-8m-random", overwrite=True, progress=False))


def sample_images(n: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Photo-sized JPEGs with smooth content (gradients and shapes), ~20-40 kB each."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        w, h = size
        base = np.linspace(rng.integers(0, 255, 3), rng.integers(0, 255, 3), w, dtype=np.float32)
        im = Image.fromarray(np.repeat(base[None], h, axis=0).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            r = int(rng.integers(20, 120))
            draw.ellipse((x, y, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Server:
    def __init__(
        self, bundle: Path, port: int, args: list[str], log: Path, preload: bool = True
    ) -> None:
        self.port = port
        cmd = [sys.executable, "-m", "edgeclip", "serve", str(bundle), "--port", str(port),
               *(["--preload"] if preload else []), "--idle-ttl", "0", "--log-level", "warning",
               *args]  # fmt: skip
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        for _ in range(600):  # up to ~60 s
            if self.proc.poll() is not None:
                raise SystemExit(f"edgeclip serve exited ({self.proc.returncode}); see {log}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"edgeclip serve did not start; see {log}")

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def _client(port: int, bodies: list[bytes], next_index: Any, deadline: float, out: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    while time.monotonic() < deadline:
        i = next_index()
        if i is None:
            break
        started = time.perf_counter()
        conn.request("POST", "/v1/embeddings", body=bodies[i % len(bodies)], headers=headers)
        r = conn.getresponse()
        r.read()
        out.append((time.perf_counter() - started, r.status))
    conn.close()


def run_load(port: int, bodies: list[bytes], clients: int, requests: int, max_s: float) -> dict:
    lock = threading.Lock()
    issued = iter(range(requests))

    def next_index() -> int | None:
        with lock:
            return next(issued, None)

    results: list[tuple[float, int]] = []
    deadline = time.monotonic() + max_s
    threads = [threading.Thread(target=_client, args=(port, bodies, next_index, deadline, results))
               for _ in range(clients)]  # fmt: skip
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max_s + 120)
    wall = time.perf_counter() - started
    ok = np.array([s for s, status in results if status == 200])
    pct = np.percentile(ok, [50, 95, 99]) * 1000 if len(ok) else [float("nan")] * 3
    return {
        "clients": clients, "requests": len(results), "ok": int(len(ok)),
        "errors": len(results) - int(len(ok)), "seconds": round(wall, 3),
        "req_per_s": round(len(ok) / wall, 2),
        "p50_ms": round(float(pct[0]), 1), "p95_ms": round(float(pct[1]), 1),
        "p99_ms": round(float(pct[2]), 1),
    }  # fmt: skip


def in_process_rounds(model: Any, images: list[bytes], batch_size: int) -> list[dict]:
    """3 rounds of ``encode_image`` on the same bytes: images per wall and per CPU second."""
    batch = images[:batch_size]
    model.encode_image(batch[:4])  # warm
    rounds = []
    for _ in range(3):
        started, cpu0 = time.perf_counter(), time.process_time()
        model.encode_image(batch, batch_size=batch_size, invariant=True)
        wall, cpu = time.perf_counter() - started, max(time.process_time() - cpu0, 1e-9)
        rounds.append({"images_per_s": round(len(batch) / wall, 2),
                       "images_per_cpu_s": round(len(batch) / cpu, 2)})  # fmt: skip
    return rounds


def _summary(rounds: list[dict]) -> dict:
    wall = [r["images_per_s"] for r in rounds]
    cpu = [r["images_per_cpu_s"] for r in rounds]
    return {"images_per_s": round(float(np.median(wall)), 2), "best_images_per_s": max(wall),
            "images_per_cpu_s": round(float(np.median(cpu)), 2),
            "rounds_images_per_s": wall}  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def batch_stats(server: Server) -> dict[str, float]:
    """Mean inputs per model call so far, by modality, from /metrics."""
    _, text = server.get("/metrics")
    sums, counts = {}, {}
    for line in text.decode().splitlines():
        for kind, store in (("_sum", sums), ("_count", counts)):
            if line.startswith(f"edgeclip_batch_size{kind}{{"):
                modality = line.split('modality="')[1].split('"')[0]
                store[modality] = float(line.rsplit(" ", 1)[1])
    return {m: round(sums[m] / counts[m], 2) for m in counts if counts[m]}


def _bodies(images: list[bytes]) -> dict[str, list[bytes]]:
    return {
        "text": [json.dumps({"input": [t]}).encode() for t in TEXTS],
        "image": [json.dumps({"modality": "image", "input": [
            "data:image/jpeg;base64," + base64.b64encode(b).decode()]}).encode() for b in images],
    }  # fmt: skip


def _run_matrix(server: Server, bodies: dict, args: argparse.Namespace) -> dict[str, list[dict]]:
    worker = json.loads(server.get("/health")[1])["worker_pid"]
    runs: dict[str, list[dict]] = {"text": [], "image": []}
    for modality in ("text", "image"):
        run_load(server.port, bodies[modality], 2, 8, 60)  # warm this path
        for clients in args.clients:
            requests = args.requests * (1 if clients == 1 else clients // 2 + 1)
            cpu0 = _cpu_seconds(server.proc.pid) + _cpu_seconds(worker)
            row = run_load(server.port, bodies[modality], clients, requests, args.max_seconds)
            row["server_cpu_s"] = round(
                _cpu_seconds(server.proc.pid) + _cpu_seconds(worker) - cpu0, 2
            )
            row["per_cpu_s"] = round(row["ok"] / max(row["server_cpu_s"], 1e-9), 2)
            runs[modality].append(row)
            print(f"{modality:5} x{clients:<3} {row['req_per_s']:8.1f} req/s  p50 "
                  f"{row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  "
                  f"{row['per_cpu_s']:.1f}/CPU-s  ({row['ok']} ok, {row['errors']} errors)", flush=True)  # fmt: skip
    return runs


def measure(args: argparse.Namespace, bundle: Path, work: Path) -> dict[str, Any]:
    import edgeclip

    images = sample_images(32)
    model = edgeclip.load(str(bundle), backend=args.backend, precision=args.precision,
                          threads=args.threads)  # fmt: skip
    # in-process rounds bracket the load test (3 before, 3 after); the median is compared,
    # since the server's rate is an average over a long run on a machine that may be shared
    before = in_process_rounds(model, images, args.max_batch)
    server_args = ["--backend", args.backend, "--precision", args.precision,
                   "--max-batch", str(args.max_batch)]  # fmt: skip
    if args.threads:
        server_args += ["--threads", str(args.threads)]
    server = Server(bundle, _free_port(), server_args, work / "serve.log")
    try:
        runs = _run_matrix(server, _bodies(images), args)
        health = json.loads(server.get("/health")[1])
        mean_batch = batch_stats(server)
    finally:
        server.stop()
    base = _summary(before + in_process_rounds(model, images, args.max_batch))
    top = max(runs["image"], key=lambda r: r["clients"])
    ratio = top["req_per_s"] / base["images_per_s"]
    return {
        "runs": runs,
        "in_process": {"variant": model.variant.id, "batch": args.max_batch, **base},
        "target": {"clients": top["clients"], "server_images_per_s": top["req_per_s"],
                   "in_process_images_per_s": base["images_per_s"], "ratio": round(ratio, 3),
                   "ratio_to_best_round": round(top["req_per_s"] / base["best_images_per_s"], 3),
                   "cpu_ratio": round(top["per_cpu_s"] / base["images_per_cpu_s"], 3),
                   "goal": 0.8, "met": ratio >= 0.8},
        "mean_batch_size": mean_batch,
        "server_memory": health["memory"],
    }  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_info() -> dict[str, Any]:
    import onnxruntime

    from benchmarks.hosts import host_label
    from edgeclip.verify import cpu_identity

    return {"label": host_label(), "cpu": cpu_identity(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "loadavg_start": os.getloadavg()}  # fmt: skip


def render_md(result: dict[str, Any]) -> str:
    host, t, base = result["host"], result["target"], result["in_process"]
    lines = [
        f"# `edgeclip serve` load test: {host['label']}",
        "",
        f"{host['cpu']['cpu']} ({', '.join(host['cpu']['isa']) or 'no AVX'}), {host['cpus']} CPUs, "
        f"Python {host['python']}, onnxruntime {host['onnxruntime']}. Variant "
        f"`{base['variant']}` of a TinyCLIP-8M-shaped random bundle; one input per request, "
        "loopback, keep-alive clients in one process. Load average at start "
        f"{host['loadavg_start'][0]:.2f}, at end {result['loadavg_end'][0]:.2f} "
        "(this machine is shared, so treat the numbers as one run).",
        "",
        "| requests | clients | req/s | p50 ms | p95 ms | p99 ms | per CPU-s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for modality, rows in result["runs"].items():
        for r in rows:
            lines.append(f"| {modality} | {r['clients']} | {r['req_per_s']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['per_cpu_s']:.1f} | {r['errors']} |")  # fmt: skip
    verdict = "met" if t["met"] else "**not met**"
    lines += [
        "",
        f"In process, `encode_image` on the same JPEGs at batch {base['batch']}: median "
        f"{base['images_per_s']:.1f} images/s over 3 rounds before and 3 after the load test "
        f"({base['rounds_images_per_s']}).",
        f"Server at {t['clients']} clients: {t['server_images_per_s']:.1f} images/s = "
        f"**{100 * t['ratio']:.0f} %** of the median ({100 * t['ratio_to_best_round']:.0f} % of the "
        f"best round); target 80 %: {verdict}.",
        f"Per CPU second (server + worker processes against the in-process call; less "
        f"sensitive to other load on the machine): **{100 * t['cpu_ratio']:.0f} %**.",
        f"Mean inputs per model call over the whole run: {result['mean_batch_size']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--bundle", default=None, help="bundle to serve (default: build the 8M-shaped one)"
    )
    ap.add_argument("--work", default=None, help="where to build/keep the bundle (default: temp)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument(
        "--requests", type=int, default=40, help="requests at 1 client (scaled up with clients)"
    )
    ap.add_argument("--max-seconds", type=float, default=60.0, help="bound on each run")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle) if args.bundle else build_bundle(work)
    result: dict[str, Any] = {"what": "edgeclip serve loopback load test", "host": host_info(),
                              "bundle": bundle.name, "settings": {k: v for k, v in vars(args).items()
                                                                  if k not in ("out_dir", "work")}}  # fmt: skip
    result.update(measure(args, bundle, work))
    result["loadavg_end"] = os.getloadavg()
    out = Path(args.out_dir or ROOT / "benchmarks" / "results" / result["host"]["label"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "serve_load.md").write_text(render_md(result))
    print(f"wrote {out / 'serve_load.json'} and serve_load.md: {result['target']}")
    return result


if __name__ == "__main__":
    main()
