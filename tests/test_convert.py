"""converters/: checkpoints (HF and open_clip) → ONNX bundles, parity with transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

for _mod in ("torch", "transformers", "safetensors", "onnx", "onnxruntime"):
    pytest.importorskip(_mod)

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from converters.bundle_writer import convert  # noqa: E402
from converters.checkpoints import load_checkpoint, torch_embeddings  # noqa: E402
from converters.export_check import _synthetic_images  # noqa: E402
from converters.fixtures import ARCHS, random_model  # noqa: E402
from converters.open_clip_keys import hf_config_from_open_clip  # noqa: E402
from edgeclip.bundle import MANIFEST, Bundle, sha256_file  # noqa: E402
from edgeclip.preprocess import Preprocessor  # noqa: E402
from edgeclip.tokenizer import tokenize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_CONFIG = ROOT.parent / "shared/weights/tinyclip-vit-8m16-text3m/open_clip_config.json"
TEXTS = ["a photo of a cat", "a dog on a skateboard", "", "über café 東京 🚀", "word " * 100]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ort(bundle: Path, tower: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(bundle / "onnx-fp32" / f"{tower}.onnx"), providers=["CPUExecutionProvider"]
    )


def _fresh_inputs(bundle: Path, n_images: int = 5):
    """Inputs the conversion never saw: other pictures, other captions, batch 5."""
    m = Bundle.open(bundle).manifest
    pixels = Preprocessor(m["preprocess"])(_synthetic_images(n_images, seed=42))[0]
    ids = tokenize(TEXTS, context_length=m["tokenizer"]["context_length"])
    return pixels, ids


def _bundle_vs_transformers(bundle: Path, checkpoint: Path) -> tuple[float, float]:
    model, _ = load_checkpoint(checkpoint)
    pixels, ids = _fresh_inputs(bundle)
    ref = torch_embeddings(model, pixels, ids)
    got_i = _ort(bundle, "image").run(None, {"pixel_values": pixels})[0]
    got_t = _ort(bundle, "text").run(None, {"input_ids": ids})[0]
    cos_i = (_unit(got_i) * _unit(ref["image"])).sum(1)
    cos_t = (_unit(got_t) * _unit(ref["text"])).sum(1)
    # Distinct inputs must give distinct embeddings, or the parity above would prove little.
    sims = _unit(ref["image"]) @ _unit(ref["image"]).T
    assert sims[np.triu_indices(len(sims), 1)].max() < 0.99
    return float(cos_i.min()), float(cos_t.min())


# -- parity on the TinyCLIP-8M shape and on an architecture that differs in every dimension ----


def test_tinyclip8m_bundle_matches_transformers(tinyclip8m_bundle, tinyclip8m_hf_checkpoint):
    manifest = Bundle.open(tinyclip8m_bundle).manifest
    arch = manifest["architecture"]
    assert (arch["image_size"], arch["patch_size"], arch["embed_dim"]) == (224, 16, 512)
    assert (arch["vision_width"], arch["vision_layers"], arch["vision_heads"]) == (256, 10, 4)
    assert (arch["text_width"], arch["text_layers"], arch["text_heads"]) == (256, 3, 4)
    assert (arch["context_length"], arch["vocab_size"], arch["hidden_act"]) == (77, 49408, "gelu")
    parity = manifest["variants"][0]["parity"]
    assert min(parity["image_cosine_min"], parity["text_cosine_min"]) >= 0.9999
    image_min, text_min = _bundle_vs_transformers(tinyclip8m_bundle, tinyclip8m_hf_checkpoint)
    assert image_min >= 0.9999 and text_min >= 0.9999


def test_odd_architecture_bundle_matches_transformers(odd_bundle, odd_hf_checkpoint):
    arch = Bundle.open(odd_bundle).manifest["architecture"]
    tiny = {
        "embed_dim": 512,
        "image_size": 224,
        "patch_size": 16,
        "vision_width": 256,
        "vision_layers": 10,
        "vision_heads": 4,
        "text_width": 256,
        "text_layers": 3,
        "text_heads": 4,
        "context_length": 77,
        "hidden_act": "gelu",
    }
    assert all(arch[k] != v for k, v in tiny.items()), arch
    image_min, text_min = _bundle_vs_transformers(odd_bundle, odd_hf_checkpoint)
    assert image_min >= 0.9999 and text_min >= 0.9999


def test_fixture_is_exactly_tinyclip_8m():
    if SHARED_CONFIG.is_file():
        assert ARCHS["tinyclip-8m"] == json.loads(SHARED_CONFIG.read_text())
    cfg = hf_config_from_open_clip(ARCHS["tinyclip-8m"])
    assert cfg["vision_config"]["num_attention_heads"] == 4  # 256 // head_width 64
    assert cfg["vision_config"]["intermediate_size"] == 1024
    assert cfg["text_config"]["hidden_act"] == "gelu"  # TinyCLIP is GELU, not QuickGELU


# -- formats ------------------------------------------------------------------------------------


def test_hf_safetensors_bundle_lists_every_file_with_its_sha256(micro_bundle, micro_hf_checkpoint):
    bundle = Bundle.open(micro_bundle)  # verifies sizes and hashes
    files = bundle.manifest["files"]
    on_disk = {
        p.relative_to(micro_bundle).as_posix() for p in micro_bundle.rglob("*") if p.is_file()
    }
    assert set(files) == on_disk - {MANIFEST}
    assert set(files) == {
        "onnx-fp32/image.onnx",
        "onnx-fp32/text.onnx",
        "tokenizer/bpe_simple_vocab_16e6.txt.gz",
        *(f"probe/{name}.npy" for name in ("images", "texts", "reference_image", "reference_text")),
    }
    for rel, meta in files.items():
        assert meta["sha256"] == sha256_file(micro_bundle / rel)
        assert meta["size"] == (micro_bundle / rel).stat().st_size
    source = bundle.manifest["source"]
    assert source["kind"] == "hf-checkpoint"
    assert source["files"]["model.safetensors"]["sha256"] == sha256_file(
        micro_hf_checkpoint / "model.safetensors"
    )
    assert bundle.manifest["preprocess"]["image_size"] == 32
    assert set(bundle.manifest["conversion"]["seconds"]) >= {
        "load",
        "export_image",
        "export_text",
        "parity",
    }
    assert 0 < bundle.logit_scale <= 100


def test_hf_bin_and_open_clip_give_the_same_bundle_outputs(
    micro_bundle, micro_hf_bin_checkpoint, micro_open_clip_checkpoint, tmp_path
):
    pixels, ids = _fresh_inputs(micro_bundle)
    want_i = _ort(micro_bundle, "image").run(None, {"pixel_values": pixels})[0]
    want_t = _ort(micro_bundle, "text").run(None, {"input_ids": ids})[0]
    for ckpt, kind in (
        (micro_hf_bin_checkpoint, "hf-checkpoint"),
        (micro_open_clip_checkpoint, "open_clip-checkpoint"),
    ):
        out = convert(ckpt, tmp_path / kind, n_parity_images=3, n_parity_texts=4)
        manifest = Bundle.open(out).manifest
        assert manifest["source"]["kind"] == kind
        assert manifest["variants"][0]["options"]["export_parity"]["n_texts"] == 4
        np.testing.assert_allclose(
            _ort(out, "image").run(None, {"pixel_values": pixels})[0], want_i, atol=1e-5
        )
        np.testing.assert_allclose(
            _ort(out, "text").run(None, {"input_ids": ids})[0], want_t, atol=1e-5
        )
    assert (
        "pytorch_model.bin" in Bundle.open(tmp_path / "hf-checkpoint").manifest["source"]["files"]
    )


def test_open_clip_mapping_round_trips_exactly(odd_hf_checkpoint, odd_open_clip_checkpoint):
    hf_model, hf_info = load_checkpoint(odd_hf_checkpoint)
    oc_model, oc_info = load_checkpoint(odd_open_clip_checkpoint)
    assert (
        oc_info["kind"] == "open_clip-checkpoint"
        and oc_info["architecture"] == hf_info["architecture"]
    )
    assert oc_info["architecture"]["hidden_act"] == "quick_gelu"
    hf_sd, oc_sd = hf_model.state_dict(), oc_model.state_dict()
    assert set(hf_sd) == set(oc_sd)
    for key in hf_sd:
        assert torch.equal(hf_sd[key], oc_sd[key]), key
    pixels = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
    ids = tokenize(TEXTS, context_length=64)
    a, b = torch_embeddings(hf_model, pixels, ids), torch_embeddings(oc_model, pixels, ids)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["text"], b["text"])
    assert oc_info["logit_scale"] == pytest.approx(hf_info["logit_scale"])


def test_open_clip_flat_safetensors_loads_the_same(
    odd_open_clip_checkpoint, odd_hf_checkpoint, tmp_path
):
    from safetensors.torch import save_file

    nested = torch.load(odd_open_clip_checkpoint, weights_only=True)["state_dict"]
    flat = {k.removeprefix("module."): v.contiguous() for k, v in nested.items()}
    save_file(flat, str(tmp_path / "student.safetensors"))
    shutil.copy(
        odd_open_clip_checkpoint.parent / "open_clip_config.json", tmp_path / "student.json"
    )
    model, info = load_checkpoint(tmp_path)  # the directory: one weights file + its config
    assert info["kind"] == "open_clip-checkpoint" and info["path"].endswith("student.safetensors")
    ref, _ = load_checkpoint(odd_hf_checkpoint)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values())
    )


def test_legacy_hf_checkpoint_loads_and_converts(micro_hf_checkpoint, micro_bundle, tmp_path):
    """transformers-4.x style: position_ids buffers in pytorch_model.bin, eos_token_id 2."""
    from safetensors.torch import load_file

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    sd = load_file(str(micro_hf_checkpoint / "model.safetensors"))
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    torch.save(sd, legacy / "pytorch_model.bin")
    cfg = json.loads((micro_hf_checkpoint / "config.json").read_text())
    cfg["text_config"].update(eos_token_id=2, bos_token_id=0, pad_token_id=1)
    cfg["transformers_version"] = "4.26.0"
    (legacy / "config.json").write_text(json.dumps(cfg))
    out = convert(legacy, tmp_path / "bundle", n_parity_images=2, n_parity_texts=8)
    assert Bundle.open(out).manifest["preprocess"]["image_size"] == 32  # CLIP defaults at 32 px
    ids = tokenize(TEXTS)
    want = _ort(micro_bundle, "text").run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(_ort(out, "text").run(None, {"input_ids": ids})[0], want, atol=1e-5)


def test_graphs_are_single_file_dynamic_batch_and_pool_on_int32(micro_bundle):
    assert sorted(p.name for p in (micro_bundle / "onnx-fp32").iterdir()) == [
        "image.onnx",
        "text.onnx",
    ]
    for tower, in_name, out_name, dtype in (
        ("image", "pixel_values", "image_embeds", onnx.TensorProto.FLOAT),
        ("text", "input_ids", "text_embeds", onnx.TensorProto.INT64),
    ):
        proto = onnx.load(str(micro_bundle / "onnx-fp32" / f"{tower}.onnx"))
        assert proto.opset_import[0].version == 17
        (inp,), (out,) = proto.graph.input, proto.graph.output
        assert (inp.name, out.name, inp.type.tensor_type.elem_type) == (in_name, out_name, dtype)
        assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    text = onnx.load(str(micro_bundle / "onnx-fp32" / "text.onnx"))
    assert [n.op_type for n in text.graph.node].count("ArgMax") == 1
    # Batch sizes other than the export's (2) and pooling at the EOT wherever it falls.
    session = _ort(micro_bundle, "text")
    ids = tokenize(["a", "a b c d e f g h", "a"], context_length=77)
    out = session.run(None, {"input_ids": ids})[0]
    assert out.shape == (3, 32)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    assert not np.allclose(out[0], out[1], atol=1e-3)


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["odd", "tinyclip8m"])
def test_edgeclip_load_matches_transformers(which, request):
    edgeclip = pytest.importorskip("edgeclip")
    if not hasattr(edgeclip, "load"):
        pytest.skip("edgeclip.load is not there yet")
    bundle = request.getfixturevalue(f"{which}_bundle")
    checkpoint = request.getfixturevalue(f"{which}_hf_checkpoint")
    runtime = edgeclip.load(str(bundle), backend="onnxruntime", precision="fp32")
    images = _synthetic_images(4, seed=7)
    manifest = Bundle.open(bundle).manifest
    model, _ = load_checkpoint(checkpoint)
    pixels = Preprocessor(manifest["preprocess"])(images)[0]
    ids = tokenize(TEXTS, context_length=manifest["tokenizer"]["context_length"])
    ref = torch_embeddings(model, pixels, ids)
    got_i = runtime.encode_image(images)
    with pytest.raises(edgeclip.BatchError) as caught:  # "" has no words: refused, not embedded
        runtime.encode_text(TEXTS)
    assert set(caught.value.failures) == {TEXTS.index("")}
    worded = [i for i, t in enumerate(TEXTS) if t]
    got_t = caught.value.results[worded]
    assert (got_i * _unit(ref["image"])).sum(1).min() >= 0.9999
    assert (got_t * _unit(ref["text"][worded])).sum(1).min() >= 0.9999


def test_command_line_writes_fixture_and_bundle(tmp_path, capsys):
    from converters.__main__ import main

    assert (
        main(["fixture", str(tmp_path / "ckpt"), "--arch", "micro", "--format", "open_clip"]) == 0
    )
    assert "random weights" in capsys.readouterr().out
    argv = ["convert", str(tmp_path / "ckpt" / "micro.pt"), "-o", str(tmp_path / "b")]
    assert main(argv + ["--parity-images", "2", "--parity-texts", "2"]) == 0
    assert "text_cosine_min" in capsys.readouterr().out
    assert Bundle.open(tmp_path / "b").manifest["source"]["kind"] == "open_clip-checkpoint"
    assert main(argv) == 2  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    # As a real process: a missing checkpoint fails fast (before torch is imported) with status 2.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "converters",
            "convert",
            str(tmp_path / "missing"),
            "-o",
            str(tmp_path / "c"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_random_model_is_deterministic():
    a, b = random_model("micro", seed=3), random_model("micro", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
