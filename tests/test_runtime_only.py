"""The runtime as a runtime-only install has it (``pip install ".[onnx]"``: no torch, no
transformers, no converters' packages): load a prebuilt bundle, verify it on this host, embed,
classify, keep vectors batch-invariant, and use the CLI. CI runs this file twice: in the full
environment, and in a fresh venv with only the onnx extra, on bundles built by the first run
(``EDGECLIP_TEST_BUNDLES``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeclip

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("EDGECLIP_TEST_BUNDLES")
    if prebuilt:
        path = Path(prebuilt) / "micro"
        assert (path / "manifest.json").is_file(), f"{path}: run scripts/build_test_bundles.py"
        return path
    if importlib.util.find_spec("torch") is None:
        pytest.fail("no torch to build the bundle and no EDGECLIP_TEST_BUNDLES: see .ci/run")
    out = tmp_path_factory.mktemp("runtime-only")
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_test_bundles.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=600)
    return out / "micro"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGECLIP_PROBE", "0")


def _images(n: int):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8) for i in range(n)]


def test_load_verify_embed_classify_without_torch(bundle):
    model = edgeclip.load(bundle)
    assert model.verification is not None and model.verification.state == "passed"
    img = model.encode_image(_images(3))
    txt = model.encode_text(["a red circle", "a blue square"])
    assert img.shape[0] == 3 and txt.shape == (2, img.shape[1]) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    top = model.classify(_images(1)[0], ["red circle", "blue square"], top_k=2)
    assert [label for label, _ in top] and abs(sum(p for _, p in top) - 1.0) < 1e-5
    assert "torch" not in sys.modules or importlib.util.find_spec("torch") is not None


def test_every_variant_has_a_verdict_here_and_failures_are_refused(bundle):
    statuses = {st.variant.id: st for st in edgeclip.verify_bundle(edgeclip.Bundle.open(bundle))}
    assert statuses["onnx-fp32"].state == "passed"
    for vid, st in statuses.items():
        assert st.state in ("passed", "failed")
        # checked on this host (numbers and time), or refused on its conversion gate
        assert st.result.get("seconds", 0) > 0 or "at conversion" in st.reason
        if st.state == "failed":
            with pytest.raises(edgeclip.VerificationError, match=vid):
                edgeclip.load(bundle, backend="onnx", precision=st.variant.precision)


def test_invariant_rows_equal_encoding_alone(bundle):
    model = edgeclip.load(bundle, backend="onnx", precision="fp32")
    images = _images(5)
    batch = model.encode_image(images, invariant=True)
    alone = np.stack([model.encode_image(im)[0] for im in images])
    assert np.abs(batch - alone).max() <= 1e-5


def test_one_bad_image_keeps_the_good_ones(bundle, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    model = edgeclip.load(bundle)
    with pytest.raises(edgeclip.BatchError) as err:
        model.encode_image([_images(1)[0], str(bad), _images(2)[1]])
    assert err.value.ok == [True, False, True] and "broken.jpg" in err.value.failures[1]
    assert np.isfinite(err.value.results[[0, 2]]).all() and np.isnan(err.value.results[1]).all()


def test_cli_verify_and_classify(bundle, tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (220, 30, 30)).save(path)
    env = {**os.environ}
    run = subprocess.run([sys.executable, "-m", "edgeclip", "verify", str(bundle), "--json"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode in (0, 1), run.stderr
    report = json.loads(run.stdout)
    assert {r["variant"] for r in report["variants"]} >= {"onnx-fp32"} and report["cpu"]
    run = subprocess.run([sys.executable, "-m", "edgeclip", "classify", str(path), "--labels",
                          "red", "blue", "--model", str(bundle), "--json"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)[0]["top"][0]["label"] in ("red", "blue")


def test_later_starts_import_nothing_they_do_not_use(bundle):
    """A load whose verdict is cached, then one classify, in a fresh process: none of the
    modules that used to cost start-up time (installed versions through importlib.metadata and
    its email parser, `uname -p` through subprocess, the thread pool, importlib.resources)."""
    code = (
        "import sys, numpy as np, edgeclip\n"
        f"m = edgeclip.load({str(bundle)!r}, backend='onnx', precision='fp32')\n"
        "m.classify(np.zeros((40, 50, 3), np.uint8), ['a cat', 'a dog'])\n"
        "print(m.verification.cached, sorted(n for n in ('importlib.metadata', 'email', "
        "'subprocess', 'concurrent.futures', 'importlib.resources') if n in sys.modules))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=300, env=os.environ) for _ in range(2)]  # fmt: skip
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert runs[0].stdout.split()[0] == "False"  # the first start checks the variant
    assert runs[1].stdout.strip() == "True []"


def test_package_versions_read_from_their_install_folders(tmp_path, monkeypatch):
    from importlib import metadata

    from edgeclip.versions import package_version

    for name in ("numpy", "onnxruntime", "Pillow", "pillow"):
        assert package_version(name) == metadata.version(name)
    assert package_version("no-such-package-here") is None
    (tmp_path / "odd_name-1.2.3.dist-info").mkdir()
    (tmp_path / "old_egg-0.9-py3.11.egg-info").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    package_version.cache_clear()
    assert package_version("odd-name") == "1.2.3" and package_version("Old.Egg") == "0.9"
    package_version.cache_clear()
