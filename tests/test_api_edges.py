"""The API's edges on a real bundle and real ONNX Runtime sessions: a bad environment value is
refused by name and leaves no verdict behind, one bad text or image in a batch costs the others
nothing (``similarity`` included), a lone bad input is a plain ``InputError``, and a manifest that
was edited into nonsense is refused before anything runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeclip
from edgeclip.errors import BatchError, InputError, IntegrityError, ModelNotFoundError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(micro_bundle):
    return edgeclip.load(micro_bundle, backend="onnx", precision="fp32")


def _picture(color=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", (40, 30), color)
    img.paste((30, 30, 200), (5, 5, 20, 20))
    return img


def test_a_bad_environment_value_is_named_and_leaves_no_failed_verdict(micro_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGECLIP_ORT_LOG_LEVEL", "abc")
    with pytest.raises(InputError, match=r"EDGECLIP_ORT_LOG_LEVEL='abc' is not one of 0, 1, 2, 3, 4"):
        edgeclip.load(micro_bundle, backend="onnx", precision="int8")
    monkeypatch.setenv("EDGECLIP_ORT_LOG_LEVEL", "3")
    m = edgeclip.load(micro_bundle, backend="onnx", precision="fp32")
    assert m.verification is None or m.verification.state == "passed"
    checks = tmp_path / "home" / "device_checks.json"
    text = checks.read_text() if checks.exists() else ""
    assert "invalid literal" not in text and "abc" not in text


@pytest.mark.parametrize("name, value", [("EDGECLIP_ORT_SPINNING", "maybe"), ("EDGECLIP_ORT_CACHE", "yes"),
                                         ("EDGECLIP_OV_HINT", "FAST"), ("EDGECLIP_OV_PRECISION", "f8")])  # fmt: skip
def test_every_setting_with_choices_refuses_other_values(micro_bundle, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=f"{name}='{value}' is not one of"):
        edgeclip.load(micro_bundle, backend="onnx", precision="fp32")


def test_settings_choices_ignore_case():
    from edgeclip import settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECLIP_OV_HINT", "throughput")
        assert settings.get("EDGECLIP_OV_HINT") == "THROUGHPUT"


def test_similarity_keeps_the_good_cells_when_an_image_and_a_text_fail(model, tmp_path):
    good, texts = _picture(), ["a red square", "a blue circle", None]
    with pytest.raises(BatchError) as info:
        model.similarity([good, str(tmp_path / "missing.jpg")], texts)
    err = info.value
    assert err.results.shape == (2, 3) and set(err.failures) == {1}
    assert np.isnan(err.results[1]).all() and np.isnan(err.results[:, 2]).all()
    want = model.encode_image([good]) @ model.encode_text(texts[:2]).T
    np.testing.assert_allclose(err.results[:1, :2], want, atol=1e-6)
    assert isinstance(err.__cause__, BatchError) and set(err.__cause__.failures) == {2}


def test_a_text_that_is_not_a_string_costs_the_others_nothing(model):
    with pytest.raises(BatchError) as info:
        model.encode_text(["a red square", None, 5, "a blue circle"])
    err = info.value
    assert set(err.failures) == {1, 2} and "NoneType" in err.failures[1] and "not str" in err.failures[2]
    np.testing.assert_allclose(err.results[[0, 3]], model.encode_text(["a red square", "a blue circle"]),
                               atol=1e-6)  # fmt: skip


def test_a_lone_bad_input_is_an_input_error_naming_it(model, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="missing.jpg.*no such file"):
        model.encode_image(missing)
    with pytest.raises(InputError, match="missing.jpg"):
        model.classify(missing, ["a", "b"])
    with pytest.raises(InputError, match="no words"):
        model.encode_text("&nbsp;")


def test_templates_top_k_and_precision_spellings(model, micro_bundle):
    for bad in (5, b"a {}"):
        with pytest.raises(InputError, match="templates must be None, a template set name"):
            model.classify(_picture(), ["a", "b"], templates=bad)
    assert len(model.classify(_picture(), ["a", "b", "c"], top_k=np.int64(2))) == 2
    with pytest.raises(InputError, match="top_k"):
        model.classify(_picture(), ["a", "b"], top_k=True)
    assert edgeclip.load(micro_bundle, backend="ONNX", precision="FP32").variant.id == "onnx-fp32"


def test_max_pixels_is_a_load_argument_and_the_refusal_says_so(micro_bundle):
    small = edgeclip.load(micro_bundle, backend="onnx", precision="fp32", max_pixels=1000)
    with pytest.raises(InputError, match=r"40x30 = 1,200 pixels exceeds the limit of 1,000.*max_pixels=None"):
        small.encode_image(_png(_picture()))
    free = edgeclip.load(micro_bundle, backend="onnx", precision="fp32", max_pixels=None)
    assert free.encode_image(_png(_picture())).shape[0] == 1
    with pytest.raises(InputError, match="max_pixels must be a positive whole number"):
        edgeclip.load(micro_bundle, backend="onnx", precision="fp32", max_pixels=-1)


def _png(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_premultiplied_la_images_embed_like_la(model):
    base = _picture().convert("LA")
    np.testing.assert_allclose(model.encode_image(base.convert("La")), model.encode_image(base), atol=2e-2)


def _edited(micro_bundle, tmp_path, edit) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(micro_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["variants"][0]["image"].update(file="../../../etc/passwd"), "leaves the bundle"),
    (lambda m: m["variants"][0]["text"].update(file="/etc/passwd"), "leaves the bundle"),
    (lambda m: m.update(logit_scale="abc"), "logit_scale 'abc' is not a positive number"),
    (lambda m: m.update(logit_scale=-1), "logit_scale -1 is not a positive number"),
    (lambda m: m["preprocess"].update(image_size=m["preprocess"]["image_size"] * 2), "differs from the graphs'"),
    (lambda m: m.update(format_version="abc"), "format_version 'abc' is not a number"),
])  # fmt: skip
def test_an_edited_manifest_is_refused_before_anything_runs(micro_bundle, tmp_path, edit, message):
    with pytest.raises(IntegrityError, match=message):
        edgeclip.load(_edited(micro_bundle, tmp_path, edit), backend="onnx", precision="fp32")


def test_a_graph_missing_from_the_file_table_leaves_its_variant_out(micro_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(micro_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    # A hand-added variant whose graphs no sha256 in the file table covers.
    shutil.copytree(copy / "onnx-fp32", copy / "unlisted")
    extra = json.loads(json.dumps(manifest["variants"][0]))
    extra.update(id="onnx-unlisted", options={})
    for tower in ("image", "text"):
        extra[tower]["file"] = extra[tower]["file"].replace("onnx-fp32/", "unlisted/")
    manifest["variants"].append(extra)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    bundle = edgeclip.Bundle.open(copy)
    assert [v.id for v in bundle.variants] == ["onnx-fp32"]
    assert "not in the manifest's file table" in " ".join(bundle.damaged["onnx-unlisted"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_cli_embed_of_only_blank_texts_still_writes_its_nan_rows(micro_bundle, tmp_path):
    out = tmp_path / "e.npy"
    done = _cli("embed", "--model", str(micro_bundle), "--text", "", "  ", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    rows = np.load(out)
    assert rows.shape == (2, edgeclip.Bundle.open(micro_bundle).embed_dim) and np.isnan(rows).all()


def test_a_missing_path_is_called_missing_not_an_unknown_model(tmp_path):
    from edgeclip.loader import zoo_info

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        zoo_info(str(tmp_path / "nope"))


def test_a_damaged_graph_loaded_without_verification_is_named_not_a_runtime_traceback(
    micro_bundle, tmp_path
):
    copy = tmp_path / "damaged"
    shutil.copytree(micro_bundle, copy)
    graph = copy / "onnx-fp32" / "image.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    with pytest.raises(IntegrityError):  # verified: the sha256 check names the file
        edgeclip.load(copy, backend="onnx", precision="fp32")
    model = edgeclip.load(copy, backend="onnx", precision="fp32", verify=False)
    assert model.encode_text(["a red circle"]).shape[0] == 1  # the text graph is whole
    # before: onnxruntime's InvalidProtobuf traceback
    with pytest.raises(edgeclip.GraphOpenError, match="onnx cannot open .*image.onnx .*onnx-fp32") as err:
        model.encode_image([_picture()])
    assert "verification on" in str(err.value) and "re-convert" in str(err.value)
    png = tmp_path / "red.png"
    _picture().save(png)
    run = subprocess.run([sys.executable, "-m", "edgeclip", "embed", "--image", str(png), "-m", str(copy),
                          "--no-verify", "-b", "onnx", "-p", "fp32"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 2 and run.stderr.startswith("edgeclip: error: onnx cannot open"), run.stderr
    assert "Traceback" not in run.stderr
