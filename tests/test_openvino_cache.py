"""OpenVINO's compiled-model cache (``CACHE_DIR`` under ``EDGECLIP_HOME``) on a real bundle
graph: a warm cache gives the same embeddings as a cold compile; a truncated or garbage blob is
never used and is rebuilt; an unwritable home falls back to no cache with one warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from edgeclip.backends import get_backend  # noqa: E402
from edgeclip.backends import openvino as ov_backend  # noqa: E402
from edgeclip.bundle import Bundle  # noqa: E402


@pytest.fixture(scope="module")
def ir_graph(micro_bundle, tmp_path_factory) -> tuple[Path, int]:
    """The micro bundle's fp32 image tower as OpenVINO IR, and its input size."""
    bundle = Bundle.open(micro_bundle)
    onnx = next(v for v in bundle.variants if v.backend == "onnx" and v.precision == "fp32")
    xml = tmp_path_factory.mktemp("ov-ir") / "image.xml"
    ov.save_model(ov.convert_model(str(micro_bundle / onnx.image.file)), str(xml))
    return xml, int(bundle.preprocess["image_size"])


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    ov_backend._UNCACHED_WARNED.clear()
    return tmp_path / "home"


def _embed(ir_graph: tuple[Path, int]) -> np.ndarray:
    """Two fixed inputs through a freshly opened session of the real OpenVINO backend."""
    xml, size = ir_graph
    session = get_backend("openvino").open(xml, threads=1, device="cpu", precision="fp32")
    pixels = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    return session.run({session.input_names[0]: pixels})


def _blobs(home: Path) -> list[Path]:
    return sorted((home / "ov-cache").glob("*/*.blob"))


def test_warm_cache_matches_the_cold_compile(ir_graph, home):
    cold = _embed(ir_graph)
    blobs = _blobs(home)
    assert len(blobs) == 1 and blobs[0].stat().st_size > 0
    np.testing.assert_array_equal(_embed(ir_graph), cold)
    assert _blobs(home) == blobs


@pytest.mark.parametrize("fault", ["truncated", "garbage"])
def test_a_bad_blob_is_never_used_and_is_rebuilt(ir_graph, home, fault):
    reference = _embed(ir_graph)
    blob = _blobs(home)[0]
    good_size = blob.stat().st_size
    data = blob.read_bytes()
    blob.chmod(0o644)  # OpenVINO writes its blobs read-only
    blob.write_bytes(data[: len(data) // 3] if fault == "truncated" else b"\x00garbage" * 4096)
    np.testing.assert_allclose(_embed(ir_graph), reference, atol=1e-6)
    # Rewritten whole: OpenVINO's blob size varies by a few dozen bytes from one compile to the
    # next (329,794 then 329,828 bytes in one CI run), far from the third or the garbage left.
    assert abs(blob.stat().st_size - good_size) <= 0.01 * good_size
    assert blob.read_bytes()[:64] != (b"\x00garbage" * 8)[:64]
    np.testing.assert_allclose(_embed(ir_graph), reference, atol=1e-6)


def test_unwritable_home_compiles_uncached_with_one_warning(ir_graph, home, tmp_path, monkeypatch):
    reference = _embed(ir_graph)
    # A file where the home would be: mkdir fails as on a read-only mount, even for root.
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGECLIP_HOME", str(blocker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = _embed(ir_graph), _embed(ir_graph)
    np.testing.assert_allclose(first, reference, atol=1e-6)
    np.testing.assert_allclose(second, reference, atol=1e-6)
    said = [str(w.message) for w in caught if "OpenVINO model cache" in str(w.message)]
    assert len(said) == 1 and "uncached" in said[0] and "EDGECLIP_HOME" in said[0], said
