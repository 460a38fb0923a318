"""``edgeclip serve`` parts that need no server: the flags' safety checks, path containment,
the batcher's contract, the Prometheus text. Fast; no model, no subprocess."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeclip.serve.batcher import Batcher, QueueFull
from edgeclip.serve.cli import build_config, build_parser, main
from edgeclip.serve.hostguard import is_loopback
from edgeclip.serve.inputs import resolve_allowed
from edgeclip.serve.metrics import Metrics


def test_import_edgeclip_serve_is_free():
    import subprocess
    import sys

    code = "import sys, edgeclip, edgeclip.serve; print(sorted(m for m in ('starlette', 'uvicorn', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True),
                         ("[::1]", True), ("localhost", True), ("0.0.0.0", False), ("::", False),
                         ("192.168.1.10", False), ("myhost.lan", False)])  # fmt: skip
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def _config(tmp_path: Path, *args: str):
    bundle = tmp_path / "b"
    bundle.mkdir(exist_ok=True)
    (bundle / "manifest.json").write_text(
        '{"format": "edgeclip-bundle", "name": "tiny", "variants": []}'
    )
    return build_config(build_parser().parse_args([str(bundle), *args]))


def test_non_loopback_host_needs_a_key_or_insecure(tmp_path):
    with pytest.raises(SystemExit, match="refusing to listen on 0.0.0.0"):
        _config(tmp_path, "--host", "0.0.0.0")
    assert _config(tmp_path, "--host", "0.0.0.0", "--insecure").api_key is None
    assert _config(tmp_path, "--host", "0.0.0.0", "--api-key", "k").api_key == "k"
    config = _config(tmp_path, "--alias", "ViT-B-32__openai")
    assert config.names == ("tiny", str(tmp_path / "b"), "ViT-B-32__openai")


def test_unknown_model_name_fails_at_start_with_suggestions(capsys):
    assert main(["tinyclp-8m"]) == 2
    assert "Did you mean: tinyclip-8m" in capsys.readouterr().err


def test_resolve_allowed_stays_inside(tmp_path):
    root = (tmp_path / "root").resolve()
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"x")
    (tmp_path / "root-evil").mkdir()
    (root / "link").symlink_to(tmp_path / "root-evil")
    assert resolve_allowed("a/x.png", [root]) == root / "a" / "x.png"
    assert resolve_allowed(str(root / "a" / ".." / "a" / "x.png"), [root]) == root / "a" / "x.png"
    for bad in [
        "../root-evil/x",
        str(tmp_path / "root-evil"),
        "link/x",
        "/etc/passwd",
        "a/x.png\x00",
    ]:
        assert resolve_allowed(bad, [root]) is None, bad
    assert resolve_allowed("a/x.png", []) is None


def test_batcher_groups_whole_requests_and_refuses_when_full():
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        await gate.wait()
        return [i * 10 for i in items]

    async def scenario() -> list:
        b = Batcher("t", run, max_batch=4, window_s=0.01, max_queue=3)
        b.start()
        first = asyncio.ensure_future(b.submit([1]))
        for _ in range(100):  # bounded: let the loop take the first request
            if calls:
                break
            await asyncio.sleep(0)
        second = asyncio.ensure_future(b.submit([2, 3]))
        third = asyncio.ensure_future(b.submit([4]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit([5])  # 3 queued + 1 > max_queue
        gate.set()
        results = await asyncio.gather(first, second, third)
        await b.stop()
        return results

    results = asyncio.run(scenario())
    assert results == [[10], [20, 30], [40]]
    assert calls == [[1], [2, 3, 4]]  # the two queued requests became one call


def test_metrics_text_format():
    m = Metrics()
    m.request_started("/v1/embeddings")
    m.request_finished("/v1/embeddings", 200, 0.02)
    m.batch_ran("image", 3)
    text = m.render({"edgeclip_model_loaded": ("help", {(): 1})})
    assert 'edgeclip_requests_total{endpoint="/v1/embeddings",status="200"} 1' in text
    assert (
        'edgeclip_request_duration_seconds_bucket{endpoint="/v1/embeddings",le="0.025"} 1' in text
    )
    assert 'edgeclip_batch_size_bucket{modality="image",le="2.0"} 0' in text
    assert 'edgeclip_batch_size_bucket{modality="image",le="+Inf"} 1' in text
    assert "# TYPE edgeclip_model_loaded gauge\nedgeclip_model_loaded 1\n" in text
