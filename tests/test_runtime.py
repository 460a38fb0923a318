"""The runtime on a real bundle and real ONNX Runtime sessions: embeddings, classify, bad input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeclip
from edgeclip.bundle import Bundle, Tower
from edgeclip.errors import BatchError, InputError, IntegrityError, ModelNotFoundError
from edgeclip.towers import TowerRunner, text_feeds

ROOT = Path(__file__).resolve().parents[1]


def _picture(color, size=(40, 30)) -> Image.Image:
    img = Image.new("RGB", size, color)
    img.paste((255 - color[0], 255 - color[1], 255 - color[2]), (5, 5, 20, 20))
    return img


@pytest.fixture(scope="module")
def model(micro_bundle):
    return edgeclip.load(micro_bundle)


def test_embeddings_are_normalised_float32_rows_in_order(model, tmp_path):
    red, blue = _picture((220, 20, 20)), _picture((20, 20, 220))
    path = tmp_path / "blue.png"
    blue.save(path)
    emb = model.encode_image([red, str(path), path.read_bytes(), np.asarray(red)])
    assert emb.dtype == np.float32 and emb.shape == (4, model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the same picture through four input types gives the same row
    np.testing.assert_allclose(emb[0], emb[3], atol=1e-6)
    np.testing.assert_allclose(emb[1], emb[2], atol=1e-6)
    assert not np.allclose(emb[0], emb[1], atol=1e-3)
    txt = model.encode_text(["a red square", "a blue square"])
    assert txt.shape == (2, model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)


def test_batch_size_does_not_change_results(model):
    images = [_picture((i * 20, 100, 255 - i * 20)) for i in range(7)]
    a = model.encode_image(images, batch_size=1)
    b = model.encode_image(images, batch_size=3)
    np.testing.assert_allclose(a, b, atol=1e-5)
    texts = [f"caption number {i}" for i in range(7)]
    np.testing.assert_allclose(
        model.encode_text(texts, batch_size=2), model.encode_text(texts), atol=1e-5
    )


def test_one_bad_image_keeps_the_good_ones(model, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    good = _picture((10, 200, 10))
    with pytest.raises(BatchError) as info:
        model.encode_image([good, str(bad), good])
    err = info.value
    assert set(err.failures) == {1} and "broken.jpg" in err.failures[1]
    assert err.ok == [True, False, True]
    assert np.isnan(err.results[1]).all()
    np.testing.assert_allclose(err.results[0], model.encode_image(good)[0], atol=1e-6)
    with pytest.raises(BatchError) as info:
        model.classify([good, str(bad)], ["a", "b"])
    results = info.value.results
    assert results[1] is None and len(results[0]) == 2


def test_classify_probabilities_and_label_cache(model):
    img = _picture((200, 200, 0))
    top = model.classify(img, ["circle", "square", "triangle"], top_k=2)
    assert len(top) == 2 and all(isinstance(label, str) for label, _ in top)
    assert top[0][1] >= top[1][1]
    full = model.classify(img, ["circle", "square", "triangle"], top_k=10)
    assert len(full) == 3 and abs(sum(p for _, p in full) - 1.0) < 1e-5
    # probabilities are softmax(logit_scale * cosine)
    cos = model.similarity(img, ["circle", "square", "triangle"])[0]
    expect = np.exp(model.logit_scale * cos - (model.logit_scale * cos).max())
    expect /= expect.sum()
    assert abs(dict(full)["square"] - expect[1]) < 1e-4
    a = model.label_embeddings(["circle", "square"], "imagenet7")
    assert model.label_embeddings(["circle", "square"], "imagenet7") is a  # cached
    many = model.classify([img, img], ["circle", "square"], templates=["a photo of a {}."])
    assert len(many) == 2 and many[0] == many[1]


@pytest.mark.parametrize(
    "labels, message",
    [
        ([], "empty"),
        (["cat", "cat"], "twice"),
        (["cat", 3], "not a string"),
        ("cat", "list"),
        (["cat", " "], "empty"),
    ],
)
def test_bad_labels_are_named(model, labels, message):
    with pytest.raises(InputError, match=message):
        model.classify(_picture((1, 2, 3)), labels)


def test_bad_templates_and_top_k(model):
    with pytest.raises(InputError, match="template"):
        model.classify(_picture((1, 2, 3)), ["a", "b"], templates=["no placeholder"])
    with pytest.raises(InputError, match="top_k"):
        model.classify(_picture((1, 2, 3)), ["a", "b"], top_k=0)


def test_long_text_is_truncated_not_an_error(model):
    long = "a very long caption " * 100
    emb = model.encode_text([long, "short"])
    assert emb.shape[0] == 2 and np.isfinite(emb).all()


def test_tampered_bundle_is_refused(micro_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(micro_bundle, copy)
    graph = next(copy.rglob("image.onnx"))
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="image.onnx"):
        edgeclip.load(copy)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ModelNotFoundError, match="tinyclip-8m"):
        edgeclip.load("tinyclip-8n")
    with pytest.raises(ModelNotFoundError):
        edgeclip.load("./no/such/dir")


def test_unknown_backend_and_missing_precision(micro_bundle):
    with pytest.raises(InputError, match="unknown backend"):
        edgeclip.load(micro_bundle, backend="tensorflow")
    with pytest.raises(InputError, match="no variant"):
        edgeclip.load(micro_bundle, precision="int4")
    with pytest.raises(InputError, match="precision must be a name"):
        edgeclip.load(micro_bundle, precision=8)
    # None means "you choose", as "auto" does
    chosen = edgeclip.load(micro_bundle, backend=None, precision=None)
    assert chosen.variant.id == edgeclip.load(micro_bundle).variant.id


def _fixed_batch_graph(path: Path, batch: int) -> None:
    """A real ONNX graph with a fixed batch dimension: y = x @ W (W = 2·I)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(2 * np.eye(4, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_fixed_batch_towers_are_chunked_and_padded(tmp_path):
    for b in (1, 4):
        _fixed_batch_graph(tmp_path / f"g_b{b}.onnx", b)
    backend = edgeclip.backends.get_backend("onnx")
    tower = Tower("g_b{batch}.onnx", "x", "y", (1, 4))
    opened = []

    def opener(rel):
        opened.append(rel)
        return backend.open(tmp_path / rel)

    runner = TowerRunner(tower, opener, is_text=False)
    x = np.arange(11 * 4, dtype=np.float32).reshape(11, 4)
    np.testing.assert_allclose(runner(x, batch_size=8), 2 * x)
    assert sorted(set(opened)) == ["g_b1.onnx", "g_b4.onnx"]


def test_attention_mask_covers_tokens_up_to_eot():
    ids = np.zeros((2, 6), np.int64)
    ids[0, :3] = [49406, 320, 49407]
    ids[1, :2] = [49406, 49407]
    feeds = text_feeds(ids, ["input_ids", "attention_mask"], "input_ids")
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]


def test_import_is_light_and_cli_lists_models():
    code = "import sys, edgeclip; print(sorted(m for m in ('torch','transformers','onnxruntime','openvino') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    res = subprocess.run(
        [sys.executable, "-m", "edgeclip", "models", "--json"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    names = [m["name"] for m in json.loads(res.stdout)]
    assert "tinyclip-8m" in names and "clip-vit-b32" in names


def test_cli_classify_reports_bad_files_and_keeps_good(micro_bundle, tmp_path):
    good = tmp_path / "good.png"
    _picture((0, 0, 255)).save(good)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cmd = [
        sys.executable,
        "-m",
        "edgeclip",
        "classify",
        str(good),
        str(empty),
        "--labels",
        "cat",
        "dog",
        "--model",
        str(micro_bundle),
        "--json",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    rows = json.loads(res.stdout)
    assert rows[0]["input"] == str(good) and len(rows[0]["top"]) == 2
    assert "error" in rows[1] and "empty.jpg" in rows[1]["error"]


def test_cli_embed_writes_rows_in_input_order(micro_bundle, tmp_path):
    img = tmp_path / "x.png"
    _picture((9, 99, 199)).save(img)
    out = tmp_path / "e.npy"
    cmd = [
        sys.executable,
        "-m",
        "edgeclip",
        "embed",
        str(img),
        "a photo of a dog",
        "-o",
        str(out),
        "--model",
        str(micro_bundle),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    arr = np.load(out)
    model = edgeclip.load(micro_bundle)
    np.testing.assert_allclose(arr[0], model.encode_image(str(img))[0], atol=1e-5)
    np.testing.assert_allclose(arr[1], model.encode_text("a photo of a dog")[0], atol=1e-5)


def test_cli_info_shows_variants_and_auto_choice(micro_bundle):
    res = subprocess.run(
        [sys.executable, "-m", "edgeclip", "info", str(micro_bundle)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "onnx-fp32" in res.stdout and "auto on this host: onnx-fp32" in res.stdout


def test_file_objects_and_bytes_are_accepted(model):
    buf = io.BytesIO()
    _picture((50, 60, 70)).save(buf, format="PNG")
    a = model.encode_image(io.BytesIO(buf.getvalue()))
    b = model.encode_image(buf.getvalue())
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bundle_object_lists_variants(micro_bundle):
    bundle = Bundle.open(micro_bundle)
    assert [v.id for v in bundle.find(backend="onnx", precision="fp32")] == ["onnx-fp32"]
    assert bundle.logit_scale > 0


def test_verified_once_but_an_altered_file_is_still_refused(micro_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    copy = tmp_path / "bundle"
    shutil.copytree(micro_bundle, copy)
    edgeclip.load(copy)  # first load hashes every file and remembers it
    assert len(list((tmp_path / "home" / "verified").iterdir())) >= 3
    edgeclip.load(copy)  # second load: size + mtime only
    graph = next(copy.rglob("text.onnx"))
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF  # same size, new content (and a new mtime)
    graph.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="text.onnx"):
        edgeclip.load(copy)
