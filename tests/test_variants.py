"""Quantized/compiled variants on the micro fixture: every backend × precision round-trips, the gate
refuses a broken variant, calibration data is deterministic and skips unreadable images."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgeclip
from edgeclip.errors import InputError

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

PRECISIONS = "fp32,fp16,int8,int8-dynamic,int8-static,int8-weights"
# One fixed batch size for LiteRT in tests: exercises the runtime's chunk + pad path and keeps
# conversion to two graphs per tower set.
BUILDER_OPTIONS = {"litert": {"batch_sizes": [2]}}


@pytest.fixture(scope="module")
def built(micro_bundle, micro_hf_checkpoint, tmp_path_factory):
    """A copy of the micro bundle with every backend × precision added (built once)."""
    from converters.add_variants import add_variants

    bundle = tmp_path_factory.mktemp("variants") / "micro"
    shutil.copytree(micro_bundle, bundle)
    logs: list[str] = []
    manifest = add_variants(
        bundle,
        micro_hf_checkpoint,
        backends="onnx,openvino,litert,torch",
        precisions=PRECISIONS,
        n_calib=8,
        n_eval=16,
        builder_options=BUILDER_OPTIONS,
        keep_failed=True,  # failed variants stay, marked failed, so every combination is testable
        log=logs.append,
    )
    print("\n".join(logs))
    return bundle, manifest, logs


@pytest.fixture(scope="module")
def eval_data(built):
    from converters.calibration import load_calibration

    _, manifest, _ = built
    return load_calibration(None, manifest["preprocess"], n_calib=4, n_eval=8, seed=1)


def _variant(manifest, vid):
    return next(v for v in manifest["variants"] if v["id"] == vid)


EXPECTED = [
    "onnx-fp16", "onnx-int8", "onnx-int8-dynamic", "onnx-int8-static", "onnx-int8-weights",
    "openvino-fp32", "openvino-fp16", "openvino-int8", "openvino-int8-static",
    "openvino-int8-weights", "litert-fp32", "litert-int8", "litert-int8-dynamic",
    "litert-int8-weights",
    "torch-fp32",
]  # fmt: skip


def test_every_variant_is_gated_and_recorded(built):
    from edgeclip.bundle import Bundle

    bundle, manifest, logs = built
    variants = {v["id"]: v for v in manifest["variants"]}
    assert set(EXPECTED) | {"litert-int8-static", "onnx-fp32"} == set(variants)
    for vid, v in variants.items():
        if vid == "onnx-fp32":
            continue
        gate, parity = v["gate"], v["parity"]
        assert parity["reference"] == "torch-fp32"
        assert gate["thresholds"]["cosine_mean"] == 0.99
        assert gate["passed"] == (gate["reason"] is None), vid
        if gate["passed"]:
            assert min(parity["image_cosine_mean"], parity["text_cosine_mean"]) >= 0.99
            assert parity["top1_agreement_tie_tolerant"] >= 0.99
        assert (bundle / v["image"]["file"].format(batch=2)).is_file()
    # Every failure says why, in the manifest and in the log (which fail depends on the CPU).
    for vid, v in variants.items():
        if not v["gate"]["passed"]:
            assert "<" in v["gate"]["reason"] or "failed" in v["gate"]["reason"], vid
            assert any("gate FAILED, not shipped" in line and vid in line for line in logs), vid
    # The bundle verifies (sha256 of every file) and scratch/staging dirs are gone.
    assert {v.id for v in Bundle.open(bundle).variants} == set(variants)
    assert not list(bundle.parent.glob(".micro.partial-*"))
    assert not (bundle / ".litert-fp32-src").exists()


def test_failed_variant_is_not_shipped(built, tmp_path):
    """Without keep_failed, a variant that misses the gate is deleted and listed as rejected."""
    from converters.add_variants import add_variants

    bundle, _, _ = built
    copy_ = tmp_path / "b"
    shutil.copytree(bundle, copy_)
    logs: list[str] = []
    manifest = add_variants(
        copy_,
        None,
        backends="onnx",
        precisions="fp16,int8-weights",
        thresholds={"cosine_mean": 1.5},
        n_calib=4,
        n_eval=4,
        log=logs.append,
    )
    ids = {v["id"] for v in manifest["variants"]}
    assert "onnx-fp16" not in ids and "onnx-int8-weights" not in ids
    assert not (copy_ / "onnx-fp16").exists()
    rejected = {r["id"]: r["reason"] for r in manifest["rejected_variants"]}
    assert "image cosine mean" in rejected["onnx-fp16"]
    assert any(
        "gate reference: onnx-fp32" in line for line in logs
    )  # no checkpoint: onnx reference


def test_int8_search_records_its_choice(built):
    _, manifest, _ = built
    for backend in ("onnx", "openvino", "litert"):
        v = next((v for v in manifest["variants"] if v["id"] == f"{backend}-int8"), None)
        if v is None:
            continue
        search = v["options"]["search"]
        assert search[-1]["passed"] and v["options"]["config"] == search[-1]["config"]
        assert all(not s["passed"] for s in search[:-1])


@pytest.mark.parametrize("vid", EXPECTED)
def test_round_trip_through_the_runtime(built, eval_data, vid, tmp_path, monkeypatch):
    """Each variant runs through the runtime's backend + tower code (odd batches against LiteRT's
    fixed batch of 2, so padding is exercised), and ``edgeclip.load`` honours this host's check:
    a variant that passed here embeds like its check said; one that failed here is refused."""
    from converters.gate import run_variant
    from edgeclip.verify import VerificationError

    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    bundle, manifest, _ = built
    img, txt = run_variant(
        bundle, _variant(manifest, vid), eval_data.eval_pixels[:3], eval_data.eval_ids[:5]
    )
    assert img.shape[0] == 3 and txt.shape[0] == 5 and img.shape[1] == txt.shape[1]
    assert img.dtype == np.float32 and txt.dtype == np.float32
    v = _variant(manifest, vid)
    if not v["gate"]["passed"]:
        with pytest.raises(VerificationError, match=vid):
            edgeclip.load(bundle, backend=v["backend"], precision=v["precision"])
        return
    try:
        model = edgeclip.load(bundle, backend=v["backend"], precision=v["precision"])
    except VerificationError as exc:  # passed where gated, failed on this host's kernels
        assert vid in str(exc) and "thresholds" in str(exc)
        return
    assert model.variant.id == vid and model.verification.state == "passed"
    got = model.encode_text(["a red circle", "a photo of a blue ring"])
    ids = model.tokenizer(["a red circle", "a photo of a blue ring"])
    _, raw = run_variant(bundle, v, eval_data.eval_pixels[:1], ids)
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.abs(got - raw).max() < 1e-5


def test_litert_batches_recorded(built):
    bundle, manifest, _ = built
    v = _variant(manifest, "litert-fp32")
    assert v["image"]["batch_sizes"] == [2] and "{batch}" in v["image"]["file"]
    assert (bundle / v["image"]["file"].format(batch=2)).is_file()


def test_litert_dynamic_range_detection(built):
    """The tflite-runtime fallback must tell dynamic-range INT8 (zeros there) from weight-only."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeclip.backends.litert import is_dynamic_range

    bundle, manifest, _ = built
    kinds = {}
    for vid in ("litert-int8-dynamic", "litert-int8-weights", "litert-fp32"):
        f = bundle / _variant(manifest, vid)["image"]["file"].format(batch=2)
        kinds[vid] = is_dynamic_range(Interpreter(model_path=str(f)))
    assert kinds == {
        "litert-int8-dynamic": True,
        "litert-int8-weights": False,
        "litert-fp32": False,
    }


def test_gate_refuses_perturbed_graph(built, eval_data, tmp_path):
    """A deliberately broken ONNX graph (one projection weight scrambled) fails the gate."""
    import onnx
    from onnx import numpy_helper

    from converters.gate import evaluate, reference_embeddings

    bundle, manifest, _ = built
    work = tmp_path / "b"
    (work / "onnx-broken").mkdir(parents=True)
    fp32 = _variant(manifest, "onnx-fp32")
    shutil.copytree(bundle / "onnx-fp32", work / "onnx-fp32")
    graph = onnx.load(str(bundle / "onnx-fp32" / "image.onnx"))
    # The largest 2-D initializer read by the final projection; scramble its rows.
    init = max(
        (i for i in graph.graph.initializer if len(i.dims) == 2),
        key=lambda i: i.dims[0] * i.dims[1],
    )
    w = numpy_helper.to_array(init)
    rng = np.random.default_rng(0)
    init.CopyFrom(numpy_helper.from_array(rng.permutation(w) * 1.5, init.name))
    onnx.save(graph, str(work / "onnx-broken" / "image.onnx"))
    shutil.copyfile(bundle / "onnx-fp32" / "text.onnx", work / "onnx-broken" / "text.onnx")
    broken = copy.deepcopy(fp32)
    broken.update(id="onnx-broken")
    broken["image"]["file"] = "onnx-broken/image.onnx"
    broken["text"]["file"] = "onnx-broken/text.onnx"
    ref = reference_embeddings(eval_data, None, work, fp32)  # torch-free reference: onnx-fp32
    assert ref.name == "onnx-fp32"
    good = evaluate(work, fp32, eval_data, ref)
    bad = evaluate(work, broken, eval_data, ref)
    assert good["gate"]["passed"], good["gate"]
    assert not bad["gate"]["passed"]
    assert "image cosine mean" in bad["gate"]["reason"]
    assert bad["parity"]["image_cosine_mean"] < 0.99
    assert bad["parity"]["text_cosine_mean"] > 0.999  # text untouched


def test_unknown_names_and_missing_inputs(built, tmp_path):
    from converters.add_variants import add_variants
    from converters.variants import get_builder, parse_list

    bundle, _, _ = built
    with pytest.raises(InputError, match="unknown backend 'coreml'"):
        parse_list("onnx,coreml", ("onnx", "openvino"), "backend")
    with pytest.raises(InputError, match="unknown precision 'int4'"):
        add_variants(bundle, None, backends="onnx", precisions="fp16,int4")
    with pytest.raises(InputError, match="litert offers"):
        get_builder("litert", "fp16")
    with pytest.raises(InputError, match="not an edgeclip bundle"):
        add_variants(tmp_path, None)
    with pytest.raises(InputError, match="does not exist"):
        add_variants(bundle, None, calibration_dir=tmp_path / "nope")
    with pytest.raises(InputError, match="litert variants are exported from the torch model"):
        add_variants(bundle, None, backends="litert", precisions="fp32")


def _write_images(folder: Path, n: int) -> None:
    from converters.calibration import synthetic_pairs

    images, captions, _ = synthetic_pairs(n, 40, seed=3)
    lines = []
    for i, (im, cap) in enumerate(zip(images, captions)):
        im.save(folder / f"img{i:02d}.png")
        lines.append(f"img{i:02d}.png\t{cap}")
    (folder / "captions.txt").write_text("\n".join(lines))


def test_calibration_folder_skips_bad_images_and_is_deterministic(tmp_path):
    from converters.calibration import load_calibration

    _write_images(tmp_path, 12)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    logs: list[str] = []
    kw = dict(captions=tmp_path / "captions.txt", n_calib=6, n_eval=20, log=logs.append)
    a = load_calibration(tmp_path, {"image_size": 32}, **kw)
    b = load_calibration(tmp_path, {"image_size": 32}, **kw)
    assert len(a.skipped) == 2 and a.summary()["skipped_images"] == 2
    assert any("skipped 2 unreadable" in line for line in logs)
    assert len(a.calib_pixels) + len(a.eval_pixels) == 12
    assert len(a.calib_pixels) >= 1 and len(a.eval_pixels) >= 1
    assert a.calib_pixels.shape[1:] == (3, 32, 32)
    np.testing.assert_array_equal(a.calib_pixels, b.calib_pixels)
    np.testing.assert_array_equal(a.eval_ids, b.eval_ids)
    # Captions come from the file: the held-out texts are some of them.
    assert a.eval_ids.shape[1] == 77 and (a.eval_ids[:, 0] == 49406).all()
    # Without sub-folders, the captions are the probe's label set, used verbatim as prompts.
    caps = {line.split("\t")[1] for line in (tmp_path / "captions.txt").read_text().splitlines()}
    assert set(a.probe_labels) == caps and len(a.probe_ids) == len(caps)


def test_calibration_errors(tmp_path):
    from converters.calibration import load_calibration

    with pytest.raises(InputError, match="holds no images"):
        load_calibration(tmp_path, {"image_size": 32})
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "bad2.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="0 of 2 image files could be read, at least 2") as err:
        load_calibration(tmp_path, {"image_size": 32}, log=lambda _: None)
    # every unreadable file is named, so the user knows which to replace
    assert "bad.png (" in str(err.value) and "bad2.png (" in str(err.value)


def test_synthetic_calibration_default(tmp_path):
    from converters.calibration import load_calibration

    a = load_calibration(None, {"image_size": 32}, n_calib=5, n_eval=7)
    assert a.source == "synthetic"
    assert a.calib_pixels.shape == (5, 3, 32, 32) and a.eval_pixels.shape == (7, 3, 32, 32)
    assert not set(map(bytes, a.calib_pixels)) & set(map(bytes, a.eval_pixels))


def test_openvino_backend_devices_and_bad_device(built):
    from edgeclip.backends.openvino import Backend

    bundle, manifest, _ = built
    backend = Backend()
    assert "cpu" in backend.devices()
    f = bundle / _variant(manifest, "openvino-fp32")["image"]["file"]
    with pytest.raises(InputError, match="not available here"):
        backend.open(f, device="npu.7")
    session = backend.open(f, threads=1)
    assert session.fixed_batch is None and "pixel_values" in session.input_names


def test_manifest_json_is_plain(built):
    bundle, _, _ = built
    data = json.loads((bundle / "manifest.json").read_text())
    assert data["calibration"]["source"] == "synthetic"


def _int8_inputs(xml: Path) -> set[str]:
    """Names of the MatMul/Convolution ops of an IR whose activation input comes from a
    FakeQuantize (through reshapes, transposes and gathers, which do not change values)."""
    import openvino as ov

    def from_fake_quantize(node) -> bool:
        while node.get_type_name() in ("Reshape", "Transpose", "Gather", "Squeeze", "Unsqueeze"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "FakeQuantize"

    model = ov.Core().read_model(str(xml))
    return {
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() in ("MatMul", "Convolution") and from_fake_quantize(op.input_value(0).get_node())
    }


@pytest.mark.parametrize(
    "config, int8_kinds",
    [("ptq-float-patch-embedding", {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}),
     ("ptq-float-patch-embedding-smoothquant", {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}),
     ("ptq-float-attention-output", {"q_proj", "k_proj", "v_proj", "fc1", "fc2"}),
     ("ptq-mlp-only", {"fc1", "fc2"})],
)  # fmt: skip
def test_partial_ptq_keeps_what_it_names_in_float(built, eval_data, tmp_path, config, int8_kinds):
    """Each PTQ candidate puts int8 inputs on exactly the image-tower layers its ignore list
    leaves out (the final projection always float); the text tower gets int8 weights only."""
    from converters import openvino_variants

    bundle, manifest, _ = built
    root = tmp_path / "b"
    shutil.copytree(bundle, root)
    opts = dict(next(o for name, _, o in openvino_variants.INT8_CANDIDATES if name == config))
    variant = openvino_variants.build_int8_ptq(
        root, _variant(manifest, "onnx-fp32"), None, eval_data, {**opts, "id": "ov-partial"}
    )
    ops = _int8_inputs(root / variant["image"]["file"])
    assert not _int8_inputs(root / variant["text"]["file"]), "the search quantizes the image tower only"
    kinds = {next((k for k in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2",
                                "patch_embedding") if k in name), name) for name in ops}  # fmt: skip
    assert kinds == int8_kinds
    # The text tower, mostly its token table, is stored as int8 weights, not fp32.
    fp32_bin = (bundle / _variant(manifest, "openvino-fp32")["text"]["file"]).with_suffix(".bin")
    int8_bin = (root / variant["text"]["file"]).with_suffix(".bin")
    assert int8_bin.stat().st_size < fp32_bin.stat().st_size / 3
