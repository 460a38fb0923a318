"""ONNX Runtime's optimised-graph cache (edgeclip/backends/ort_cache.py) on a real bundle graph:
a hit gives the same embeddings as an uncached session; a corrupt, truncated or foreign entry is
never used and is rebuilt; an unwritable cache location falls back to no cache with a warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgeclip.backends import get_backend, ort_cache  # noqa: E402
from edgeclip.bundle import Bundle  # noqa: E402


@pytest.fixture()
def graph(micro_bundle, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGECLIP_ORT_CACHE", raising=False)
    ort_cache._warned.clear()
    bundle = Bundle.open(micro_bundle)
    variant = next(v for v in bundle.variants if v.backend == "onnx")
    _SIZE[0] = int(bundle.preprocess["image_size"])
    return micro_bundle / variant.image.file


_SIZE = [224]


def _embed(graph: Path) -> np.ndarray:
    """The image tower's output for two fixed inputs, through the real ONNX Runtime backend."""
    session = get_backend("onnx").open(graph, threads=1, device="cpu", precision="fp32")
    size = _SIZE[0]
    pixels = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    return session.run({session.input_names[0]: pixels})


def _entry(graph: Path) -> tuple[Path, dict]:
    folder = ort_cache.entry_folder(ort_cache.identity(graph))
    meta = json.loads((folder / "meta.json").read_text())
    return folder / meta["file"], meta


def _uncached(graph: Path, monkeypatch) -> np.ndarray:
    monkeypatch.setenv("EDGECLIP_ORT_CACHE", "0")
    out = _embed(graph)
    monkeypatch.delenv("EDGECLIP_ORT_CACHE")
    return out


def test_hit_reuses_the_entry_and_matches_an_uncached_session(graph, monkeypatch):
    reference = _uncached(graph, monkeypatch)
    first = _embed(graph)  # builds the entry
    model, meta = _entry(graph)
    stamp = model.stat().st_mtime_ns
    second = _embed(graph)  # reads it
    assert model.stat().st_mtime_ns == stamp  # not rebuilt
    assert meta["identity"]["graph_sha256"] == ort_cache.identity(graph)["graph_sha256"]
    np.testing.assert_allclose(first, reference, atol=1e-6)
    np.testing.assert_allclose(second, reference, atol=1e-6)


@pytest.mark.parametrize("fault", ["corrupt", "truncated", "foreign", "garbage-meta"])
def test_a_bad_entry_is_never_used_and_is_rebuilt(graph, monkeypatch, fault):
    reference = _uncached(graph, monkeypatch)
    _embed(graph)
    model, meta = _entry(graph)
    folder = model.parent
    if fault == "corrupt":  # same size, flipped bytes in the middle (weights)
        data = bytearray(model.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        model.write_bytes(bytes(data))
    elif fault == "truncated":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif fault == "foreign":  # an entry optimised on another CPU, copied into this cache
        meta["identity"] = {**meta["identity"], "cpu": "Some Other CPU", "isa": ["avx2"]}
        (folder / "meta.json").write_text(json.dumps(meta))
    else:
        (folder / "meta.json").write_text("{not json")
    assert ort_cache.valid_entry(folder, ort_cache.identity(graph)) is None
    out = _embed(graph)
    np.testing.assert_allclose(out, reference, atol=1e-6)
    rebuilt, new_meta = _entry(graph)
    assert new_meta["identity"] == ort_cache.identity(graph)
    assert ort_cache.valid_entry(folder, ort_cache.identity(graph)) == rebuilt


def test_unwritable_cache_location_falls_back_with_a_warning(graph, tmp_path, monkeypatch):
    reference = _uncached(graph, monkeypatch)
    # A file where the cache folder would go: mkdir fails exactly as on a read-only mount, and
    # this holds when the tests run as root (which ignores permission bits).
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGECLIP_HOME", str(blocker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _embed(graph)
    np.testing.assert_allclose(out, reference, atol=1e-6)
    assert any("uncached" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_cache_off_writes_nothing(graph, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECLIP_ORT_CACHE", "0")
    _embed(graph)
    assert not (tmp_path / "home" / "ort-cache").exists()


_UNREADABLE_CACHE_RUN = """
import json, sys, warnings
import edgeclip
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    model = edgeclip.load(sys.argv[1])
    vec = model.encode_text(["a photo of a dog"])[0]
print(json.dumps({"variant": model.variant.id, "vec": vec.tolist(),
                  "warnings": [str(w.message) for w in caught]}))
"""


def test_a_cache_folder_this_user_cannot_read_means_uncached_not_failed(micro_bundle, tmp_path):
    """A cache left by another user (`sudo edgeclip ...`) with mode 0700: before, stat() on its
    entry raised PermissionError inside the speed probe and the load said no variant could run
    here. Root ignores permission bits, so as root the child drops CAP_DAC_OVERRIDE first."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    (home / "ort-cache").mkdir(parents=True)
    (home / "ort-cache").chmod(0)
    env = {**os.environ, "EDGECLIP_HOME": str(home)}
    env.pop("EDGECLIP_ORT_CACHE", None)
    cmd = [sys.executable, "-c", _UNREADABLE_CACHE_RUN, str(micro_bundle)]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        (home / "ort-cache").chmod(0o755)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert any("not writable" in w and "uncached" in w for w in got["warnings"]), got["warnings"]
    import edgeclip

    uncached = edgeclip.load(micro_bundle, backend="onnx", precision=got["variant"].split("-", 1)[1])
    np.testing.assert_allclose(got["vec"], uncached.encode_text(["a photo of a dog"])[0], atol=1e-5)


def _embed_text(graph: Path) -> np.ndarray:
    from edgeclip.tokenizer import tokenize

    session = get_backend("onnx").open(graph, threads=1, device="cpu", precision="fp32")
    ids = tokenize(["a photo of a cat", "a red square"]).astype(np.int64)
    feeds = {n: ids if "ids" in n else (ids != 0).astype(np.int64) for n in session.input_names}
    return session.run(feeds)


@pytest.mark.parametrize("fault", [None, "corrupt", "missing"])
def test_the_token_embedding_is_kept_in_a_mapped_file_checked_like_the_graph(
    micro_bundle, tmp_path, monkeypatch, fault
):
    """The text tower's large initializers go to the entry's own data file (ONNX Runtime maps
    it, so unused embedding rows never become resident); a damaged or missing one is never
    used, and the entry is rebuilt."""
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGECLIP_ORT_CACHE", raising=False)
    variant = next(v for v in Bundle.open(micro_bundle).variants if v.backend == "onnx")
    text = micro_bundle / variant.text.file
    reference = _uncached_text(text, monkeypatch)
    built = get_backend("onnx").open(text, threads=1, device="cpu", precision="fp32")
    model, meta = _entry(text)
    # the load that built the entry runs on it too (its weights mapped, not held in memory)
    assert Path(built._session._model_path) == model
    data = model.parent / meta["data"]["file"]
    assert data.stat().st_size == meta["data"]["size"] > 1 << 20  # the token embedding
    assert model.stat().st_size < data.stat().st_size  # the graph no longer holds it
    if fault == "corrupt":
        raw = bytearray(data.read_bytes())
        raw[100:164] = bytes(b ^ 0xFF for b in raw[100:164])
        data.write_bytes(bytes(raw))
    elif fault == "missing":
        data.unlink()
    ident = ort_cache.identity(text)
    assert (ort_cache.valid_entry(model.parent, ident) is None) == (fault is not None)
    np.testing.assert_allclose(_embed_text(text), reference, atol=1e-6)
    rebuilt, _ = _entry(text)
    assert ort_cache.valid_entry(model.parent, ident) == rebuilt


def _uncached_text(graph: Path, monkeypatch) -> np.ndarray:
    monkeypatch.setenv("EDGECLIP_ORT_CACHE", "0")
    out = _embed_text(graph)
    monkeypatch.delenv("EDGECLIP_ORT_CACHE")
    return out


def test_an_entry_of_the_older_schema_is_removed_when_its_graph_is_cached_again(graph):
    ident = ort_cache.identity(graph)
    old = ort_cache.entry_folder({**ident, "schema": 1})
    other = ort_cache.entry_folder({**ident, "schema": 1, "graph_sha256": "0" * 64})
    for folder, identity in ((old, {**ident, "schema": 1}),
                             (other, {**ident, "schema": 1, "graph_sha256": "0" * 64})):  # fmt: skip
        folder.mkdir(parents=True)
        (folder / "model-x.onnx").write_bytes(b"\0" * 1024)
        (folder / "meta.json").write_text(json.dumps({"identity": identity, "file": "model-x.onnx"}))
    _embed(graph)  # a miss: builds the schema-2 entry
    assert ort_cache.valid_entry(ort_cache.entry_folder(ident), ident) is not None
    assert not old.exists()  # superseded: the same graph under the old schema
    assert other.exists()  # another graph's entry is not this load's business
