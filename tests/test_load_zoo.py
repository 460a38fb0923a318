"""``edgeclip.load(<zoo name>)`` end to end against the loopback hub (tests/hubserver.py).

A fixture zoo (``EDGECLIP_ZOO``) points names at fixture repos served on 127.0.0.1: one with a
prebuilt combined ONNX graph (like onnx-community's), one with a Hugging Face checkpoint that
edgeclip downloads and converts once. Both then load offline with no request.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hubserver import hub_env, sha256
from test_hub import combined_onnx  # noqa: F401  (module-scoped fixture reused)

import edgeclip

REV = "89abcdef0123456789abcdef0123456789abcdef"
ARCH = {"embed_dim": 16, "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 2,
        "vision_heads": 2, "text_width": 32, "text_layers": 2, "text_heads": 2, "context_length": 77,
        "vocab_size": 49408, "hidden_act": "gelu"}  # fmt: skip


def _zoo(tmp_path, monkeypatch, name, source):
    zoo = tmp_path / "zoo.json"
    entry = {"description": "fixture", "license": "MIT", "architecture": ARCH, "sources": [source]}
    zoo.write_text(json.dumps({"models": {name: entry}}))
    monkeypatch.setenv("EDGECLIP_ZOO", str(zoo))
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "edgeclip-home"))
    monkeypatch.delenv("EDGECLIP_CACHE", raising=False)


def test_load_zoo_name_from_prebuilt_onnx_then_offline(monkeypatch, tmp_path, combined_onnx):  # noqa: F811
    path, config, scale = combined_onnx
    data = path.read_bytes()
    pp = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}, "resample": 3,
          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_center_crop": True}  # fmt: skip
    files = {"onnx/model.onnx": data, "config.json": json.dumps(config).encode(),
             "preprocessor_config.json": json.dumps(pp).encode()}  # fmt: skip
    source = {"kind": "hub-onnx", "repo": "org/tiny-onnx", "revision": REV,
              "files": [{"role": "model", "path": "onnx/model.onnx", "sha256": sha256(data), "size": len(data)},
                        {"role": "preprocessor", "path": "preprocessor_config.json"},
                        {"role": "config", "path": "config.json"}]}  # fmt: skip
    _zoo(tmp_path, monkeypatch, "tiny-onnx", source)
    with hub_env(monkeypatch, tmp_path, {"org/tiny-onnx": {REV: files}}) as hub:
        model = edgeclip.load("tiny-onnx")
        assert any("/resolve/" in r[1] for r in hub.requests)  # first load downloaded
        hub.clear_log()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        again = edgeclip.load("tiny-onnx")
        assert hub.requests == []  # second load: no request at all
    assert model.logit_scale == pytest.approx(scale, rel=1e-5)
    img = np.full((40, 50, 3), 120, np.uint8)
    np.testing.assert_allclose(model.encode_image(img), again.encode_image(img), atol=1e-6)
    top = model.classify(img, ["red", "green"], top_k=2)
    assert [label for label, _ in top] and abs(sum(p for _, p in top) - 1) < 1e-5


def test_load_zoo_name_from_checkpoint_converts_once(monkeypatch, tmp_path, micro_hf_checkpoint):
    pytest.importorskip("torch")
    files = {p.name: p.read_bytes() for p in micro_hf_checkpoint.iterdir() if p.is_file()}
    source = {"kind": "hf-checkpoint", "repo": "org/tiny-ckpt", "revision": REV,
              "files": [{"path": name} for name in sorted(files)]}  # fmt: skip
    _zoo(tmp_path, monkeypatch, "tiny-ckpt", source)
    with hub_env(monkeypatch, tmp_path, {"org/tiny-ckpt": {REV: files}}) as hub:
        model = edgeclip.load("tiny-ckpt")
        hub.clear_log()
        again = edgeclip.load("tiny-ckpt")
        assert hub.requests == []
    assert model.bundle.root == again.bundle.root
    assert model.bundle.manifest["source"]["kind"] == "hf-checkpoint"
    ref = edgeclip.load(micro_hf_checkpoint)  # the same weights from the local directory
    text = ["a photo of a cat", "a dog"]
    np.testing.assert_allclose(model.encode_text(text), ref.encode_text(text), atol=1e-5)


def test_offline_unknown_and_uncached_model_errors_are_clear(monkeypatch, tmp_path):
    source = {"kind": "hub-onnx", "repo": "org/never-downloaded", "revision": REV,
              "files": [{"role": "model", "path": "onnx/model.onnx"}]}  # fmt: skip
    _zoo(tmp_path, monkeypatch, "never", source)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(edgeclip.ModelNotFoundError) as info:
        edgeclip.load("never")
    msg = str(info.value)
    assert "never" in msg and "org/never-downloaded" in msg and "HF_HUB_OFFLINE" in msg
