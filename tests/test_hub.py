"""edgeclip.hub and edgeclip.hub_bundle against a real HTTP server on 127.0.0.1 (tests/hubserver.py).

Request counts are taken from the server's own log, so "no request" means the server saw none.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import numpy as np
import pytest
from hubserver import (
    TINY_BIG,
    TINY_FILES,
    TINY_REPO,
    TINY_REV,
    TINY_SMALL,
    FakeHub,
    hub_env,
    sha256,
    tiny_hub_env,
)

from edgeclip.errors import IntegrityError, ModelNotFoundError
from edgeclip.hub import fetch_files, hub_cache_dir

REPO, REV, BIG, SMALL, FILES = TINY_REPO, TINY_REV, TINY_BIG, TINY_SMALL, TINY_FILES


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with tiny_hub_env(monkeypatch, tmp_path) as server:
        yield server


def _file_requests(hub: FakeHub) -> list[tuple[str, str, str | None]]:
    return [r for r in hub.requests if "/resolve/" in r[1] or r[1].startswith("/cdn/")]


def _blobs(tmp_path) -> list[str]:
    folder = tmp_path / "hf_home" / "hub" / "models--org--tiny-clip" / "blobs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_first_fetch_downloads_second_makes_no_request(hub, tmp_path):
    paths = fetch_files(REPO, REV, FILES, model_name="tiny")
    assert paths["onnx/model.onnx"].read_bytes() == BIG
    assert paths["config.json"].read_bytes() == SMALL
    # into the standard HF cache layout under HF_HOME/hub
    assert paths["config.json"] == (
        tmp_path / "hf_home" / "hub" / "models--org--tiny-clip" / "snapshots" / REV / "config.json"
    )
    first = _file_requests(hub)
    methods = [m for m, _, _ in first]
    assert methods.count("GET") == 2  # one body per file
    assert ("GET", f"/cdn/{sha256(BIG)}", None) in first  # LFS file came from the "CDN"
    assert len(first) == 5  # 1 fast-fail probe HEAD + (HEAD + GET) per file
    hub.clear_log()
    again = fetch_files(REPO, REV, FILES, model_name="tiny")
    assert again == paths
    assert hub.requests == []  # pinned revision + cached files: not a single request


def test_cache_dir_argument_and_hf_hub_cache_are_honoured(hub, tmp_path, monkeypatch):
    explicit = tmp_path / "elsewhere"
    paths = fetch_files(REPO, REV, ["config.json"], cache_dir=explicit)
    assert str(paths["config.json"]).startswith(str(explicit.resolve()))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "via_env"))
    assert hub_cache_dir() == (tmp_path / "via_env").resolve()
    paths = fetch_files(REPO, REV, ["config.json"])
    assert str(paths["config.json"]).startswith(str((tmp_path / "via_env").resolve()))


def test_tampered_lfs_file_is_refused_and_not_cached(hub, tmp_path):
    hub.tamper.add((REPO, "onnx/model.onnx"))
    # no zoo pin: checked against the LFS etag (sha256) the server advertises
    with pytest.raises(IntegrityError) as err:
        fetch_files(REPO, REV, ["onnx/model.onnx"], model_name="tiny")
    msg = str(err.value)
    assert "onnx/model.onnx" in msg and sha256(BIG) in msg and "LFS etag" in msg
    assert _blobs(tmp_path) == []
    snap = (
        tmp_path
        / "hf_home"
        / "hub"
        / "models--org--tiny-clip"
        / "snapshots"
        / REV
        / "onnx"
        / "model.onnx"
    )
    assert not snap.exists() and not snap.is_symlink()
    hub.tamper.clear()
    good = fetch_files(REPO, REV, ["onnx/model.onnx"])
    assert hashlib.sha256(good["onnx/model.onnx"].read_bytes()).hexdigest() == sha256(BIG)


def test_tampered_file_refused_against_zoo_pin_and_git_etag(hub, tmp_path):
    hub.tamper.update({(REPO, "onnx/model.onnx"), (REPO, "config.json")})
    with pytest.raises(IntegrityError, match="pinned in the zoo"):
        fetch_files(REPO, REV, FILES[:1])
    with pytest.raises(IntegrityError, match="git blob sha1"):
        fetch_files(REPO, REV, ["config.json"])
    assert _blobs(tmp_path) == []


def test_wrong_pin_is_refused(hub, tmp_path):
    bad = [{"path": "config.json", "sha256": "0" * 64}]
    with pytest.raises(IntegrityError) as err:
        fetch_files(REPO, REV, bad, model_name="tiny")
    assert "0" * 64 in str(err.value) and sha256(SMALL) in str(err.value)
    assert _blobs(tmp_path) == []


def test_connection_cut_once_is_retried_and_verified(hub):
    hub.cut[(REPO, "onnx/model.onnx")] = 1
    paths = fetch_files(REPO, REV, FILES[:1])
    assert paths["onnx/model.onnx"].read_bytes() == BIG
    # The cut GET, then a retry. huggingface_hub resumes with a Range from the bytes it had
    # written, in 10 MB chunks, so for this small file the retry starts again from 0.
    gets = [r for m, _, r in _file_requests(hub) if m == "GET"]
    assert len(gets) == 2 and gets[0] is None


def test_interrupted_download_is_never_used(hub, tmp_path):
    hub.cut[(REPO, "onnx/model.onnx")] = -1  # every attempt is cut: huggingface_hub gives up
    with pytest.raises(ModelNotFoundError) as err:
        fetch_files(REPO, REV, FILES[:1], model_name="tiny")
    assert "onnx/model.onnx" in str(err.value) and "partial download is never used" in str(
        err.value
    )
    folder = tmp_path / "hf_home" / "hub" / "models--org--tiny-clip"
    assert _blobs(tmp_path) == []  # neither a blob nor a leftover .incomplete
    assert not (folder / "snapshots" / REV / "onnx" / "model.onnx").exists()
    hub.cut.clear()
    paths = fetch_files(REPO, REV, FILES[:1])
    assert paths["onnx/model.onnx"].read_bytes() == BIG


def test_offline_with_nothing_cached_is_a_clear_error(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        fetch_files(REPO, REV, FILES, model_name="tinyclip-test")
    msg = str(err.value)
    assert "tinyclip-test" in msg and f"{REPO}@{REV}" in msg
    assert str(tmp_path / "hf_home" / "hub") in msg  # where it looked
    assert "edgeclip.load('/path/to/dir')" in msg and "HF_HUB_OFFLINE" in msg
    assert hub.requests == []


def test_offline_with_files_cached_makes_no_request(hub, monkeypatch):
    fetch_files(REPO, REV, FILES)
    fetch_files(REPO, None, ["config.json"])  # unpinned: cached under refs/main
    hub.clear_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths = fetch_files(REPO, REV, FILES)
    assert paths["onnx/model.onnx"].read_bytes() == BIG
    assert fetch_files(REPO, None, ["config.json"])["config.json"].read_bytes() == SMALL
    assert hub.requests == []


def test_unpinned_revision_asks_the_hub_each_time(hub):
    fetch_files(REPO, None, ["config.json"])
    hub.clear_log()
    fetch_files(REPO, None, ["config.json"])
    assert [m for m, _, _ in _file_requests(hub)] == ["HEAD", "HEAD"]  # probe + resolve, no body


def test_verified_once_but_size_is_always_checked(hub, monkeypatch):
    paths = fetch_files(REPO, REV, FILES)
    blob = paths["onnx/model.onnx"].resolve()
    marker = json.loads((blob.parent.parent / ".edgeclip-verified" / blob.name).read_text())
    assert marker["sha256"] == sha256(BIG) and marker["size"] == len(BIG)
    st = blob.stat()
    # Altered in place, same size and mtime: not re-hashed on load (that is what the marker
    # saves: hashing 94 MB on every load), so the change goes unseen...
    blob.write_bytes(bytes([BIG[0] ^ 1]) + BIG[1:])
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fetch_files(REPO, REV, FILES)["onnx/model.onnx"].read_bytes() != BIG
    # ...but a new mtime makes it re-hashed, refused and fetched again (before: an error
    # telling the user to fetch again),
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.warns(RuntimeWarning, match="damaged since it was fetched .*pinned in the zoo.*downloaded again"):
        assert fetch_files(REPO, REV, FILES)["onnx/model.onnx"].read_bytes() == BIG
    # and a size change is caught on every load; offline it cannot be fetched, so it is refused.
    blob.write_bytes(BIG[:-10])
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IntegrityError, match="bytes but the zoo expects .*unset HF_HUB_OFFLINE"):
        fetch_files(REPO, REV, FILES)
    assert not blob.exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert fetch_files(REPO, REV, FILES)["onnx/model.onnx"].read_bytes() == BIG


def test_unknown_file_repo_or_revision_name_the_missing_thing(hub):
    with pytest.raises(ModelNotFoundError, match=r"org/tiny-clip@.*/nope\.bin"):
        fetch_files(REPO, REV, ["nope.bin"])
    with pytest.raises(ModelNotFoundError, match="org/other"):
        fetch_files("org/other", REV, ["config.json"])
    with pytest.raises(ModelNotFoundError, match="f" * 40):
        fetch_files(REPO, "f" * 40, ["config.json"])


def test_unreachable_hub_fails_fast_with_a_clear_error(hub, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as err:
        fetch_files(REPO, REV, FILES, model_name="tiny")
    assert time.monotonic() - start < 30  # generous bound: only guards against retry loops
    assert f"127.0.0.1:{port}" in str(err.value) and "could not be reached" in str(err.value)


# ---------------------------------------------------------------- hub-onnx -> bundle


@pytest.fixture(scope="module")
def combined_onnx(tmp_path_factory):
    """A tiny random transformers CLIPModel exported as one graph, like onnx-community's.

    Returns (path, config dict, the model's exp'd logit scale).
    """
    tmp_path = tmp_path_factory.mktemp("combined")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("onnx")

    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=16,
    )  # fmt: skip
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)

    class Combined(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, pixel_values, attention_mask):
            o = self.m(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask
            )
            return o.logits_per_image, o.logits_per_text, o.text_embeds, o.image_embeds

    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[:, :4] = torch.tensor([49406, 320, 1125, 49407])
    path = tmp_path / "combined.onnx"
    torch.onnx.export(
        Combined(model),
        (ids, torch.randn(2, 3, 32, 32), (ids != 0).long()),
        str(path),
        input_names=["input_ids", "pixel_values", "attention_mask"],
        output_names=["logits_per_image", "logits_per_text", "text_embeds", "image_embeds"],
        dynamic_axes={"input_ids": {0: "text_batch"}, "attention_mask": {0: "text_batch"},
                      "pixel_values": {0: "image_batch"}},
        opset_version=17,
        dynamo=False,
    )  # fmt: skip
    return path, cfg.to_dict(), float(np.exp(3.0))


def test_logit_scale_is_measured_when_the_graph_does_not_name_it(combined_onnx):
    pytest.importorskip("onnxruntime")
    import onnx

    from edgeclip.hub_bundle import read_logit_scale

    path, config, scale = combined_onnx
    model = onnx.load(str(path))
    (init,) = [i for i in model.graph.initializer if "logit_scale" in i.name]
    old, init.name = init.name, "onnx::Exp_123"
    for node in model.graph.node:
        node.input[:] = ["onnx::Exp_123" if n == old else n for n in node.input]
    renamed = path.with_name("renamed.onnx")
    onnx.save(model, str(renamed))
    arch = {"image_size": 32, "context_length": 77}
    value, how = read_logit_scale(onnx.load(str(renamed)), renamed, config, arch)
    assert how.startswith("measured") and value == pytest.approx(scale, rel=1e-4)
    # with nothing to measure, the config's initial value is the documented last resort
    value, how = read_logit_scale(model, renamed.with_name("missing.onnx"), config, arch)
    assert "logit_scale_init_value" in how and value == pytest.approx(
        np.exp(config["logit_scale_init_value"])
    )


# 40 -> 32 is the 256 -> 224 shape of many CLIP configs: resize larger than the crop.
@pytest.mark.parametrize("shortest", [32, 40])
def test_bundle_from_hub_onnx_end_to_end(monkeypatch, tmp_path, combined_onnx, shortest):
    ort = pytest.importorskip("onnxruntime")
    combined, config, scale = combined_onnx
    onnx_bytes = combined.read_bytes()
    pp = {"crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
          "size": {"shortest_edge": shortest},
          "resample": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}  # fmt: skip
    files = {"onnx/model.onnx": onnx_bytes, "config.json": json.dumps(config).encode(),
             "preprocessor_config.json": json.dumps(pp).encode()}  # fmt: skip
    arch = {"embed_dim": 16, "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 2,
            "vision_heads": 2, "text_width": 32, "text_layers": 2, "text_heads": 2, "context_length": 77,
            "vocab_size": 49408, "hidden_act": "gelu"}  # fmt: skip
    source = {"kind": "hub-onnx", "repo": REPO, "revision": REV,
              "files": [{"role": "model", "path": "onnx/model.onnx", "sha256": sha256(onnx_bytes),
                         "size": len(onnx_bytes)},
                        {"role": "preprocessor", "path": "preprocessor_config.json"},
                        {"role": "config", "path": "config.json"}]}  # fmt: skip
    zoo = tmp_path / "zoo.json"
    zoo.write_text(json.dumps({"models": {"tiny-hub": {
        "description": "test fixture", "license": "MIT", "aliases": ["tiny-hub-alias"],
        "architecture": arch, "sources": [source]}}}))  # fmt: skip
    monkeypatch.setenv("EDGECLIP_ZOO", str(zoo))

    from edgeclip.bundle import Bundle
    from edgeclip.hub_bundle import bundle_from_hub_onnx
    from edgeclip.zoo import find_source, get_model_info

    with hub_env(monkeypatch, tmp_path, {REPO: {REV: files}}) as hub:
        entry = get_model_info("Tiny-Hub-Alias")
        src = find_source(entry, "hub-onnx")
        out = bundle_from_hub_onnx(entry["name"], entry, src, tmp_path / "bundles")
        assert out == tmp_path / "bundles" / f"tiny-hub@{REV}"
        hub.clear_log()
        assert bundle_from_hub_onnx(entry["name"], entry, src, tmp_path / "bundles") == out
        assert hub.requests == []
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # temp dir renamed away
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a built bundle needs neither the hub nor its cache
    assert bundle_from_hub_onnx(entry["name"], entry, src, tmp_path / "bundles") == out

    bundle = Bundle.open(out, verify=True)
    m = bundle.manifest
    assert m["logit_scale"] == pytest.approx(scale, rel=1e-5)
    assert m["preprocess"]["image_size"] == 32 and m["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert m["preprocess"]["resize_size"] == shortest  # the one HF mapping keeps it
    # the prebuilt export is the reference: no gate verdict written, a probe set measured here
    assert m["variants"][0]["options"]["role"] == "reference"
    assert "passed" not in m["variants"][0]["gate"]
    assert m["probe"]["reference"].startswith("onnx-fp32 (prebuilt) on ")
    assert m["architecture"]["embed_dim"] == 16 and m["tokenizer"]["context_length"] == 77
    (variant,) = bundle.variants
    assert (variant.id, variant.backend, variant.precision) == ("onnx-fp32", "onnx", "fp32")
    assert (out / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz").stat().st_size == 1356917

    rng = np.random.default_rng(1)
    pix = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    ids = np.zeros((4, 77), dtype=np.int64)
    for i, n in enumerate([3, 5, 9, 2]):
        ids[i, 0], ids[i, 1 : n + 1], ids[i, n + 1] = 49406, rng.integers(1, 49000, n), 49407
    mask = (np.arange(77)[None] <= ids.argmax(1)[:, None]).astype(np.int64)

    def run(path, feeds):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        return sess, sess.run(None, {k: v for k, v in feeds.items() if k in names})

    _, (_, _, text_ref, image_ref) = run(combined, {"input_ids": ids[:3, :], "pixel_values": pix,
                                                    "attention_mask": mask[:3]})  # fmt: skip
    img_sess, (image_out,) = run(bundle.path_of(variant.image.file), {"pixel_values": pix})
    txt_sess, (text_out,) = run(
        bundle.path_of(variant.text.file), {"input_ids": ids, "attention_mask": mask}
    )
    assert [i.name for i in img_sess.get_inputs()] == ["pixel_values"]
    assert "input_ids" in [i.name for i in txt_sess.get_inputs()]
    np.testing.assert_allclose(image_out, image_ref, atol=1e-6)
    np.testing.assert_allclose(text_out[:3], text_ref, atol=1e-6)
    assert text_out.shape == (4, 16)  # dynamic batch survives the split


def test_the_real_tinyclip_8m_entry_refuses_wrong_bytes_and_explains_offline(monkeypatch, tmp_path):
    from edgeclip.hub_bundle import bundle_from_hub_onnx
    from edgeclip.zoo import find_source, get_model_info

    entry = get_model_info("tinyclip-8m")
    src = find_source(entry, "hub-onnx")
    fake = {p: b"{}" for p in ("preprocessor_config.json", "config.json")}
    fake["onnx/model.onnx"] = b"not the real model" * 100
    with hub_env(monkeypatch, tmp_path, {src["repo"]: {src["revision"]: fake}}):
        with pytest.raises(IntegrityError, match="94071688"):
            bundle_from_hub_onnx("tinyclip-8m", entry, src, tmp_path / "bundles")
        assert not (tmp_path / "bundles").exists()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ModelNotFoundError) as err:
            bundle_from_hub_onnx("tinyclip-8m", entry, src, tmp_path / "bundles")
    msg = str(err.value)
    assert (
        "'tinyclip-8m'" in msg
        and f"{src['repo']}@{src['revision']}" in msg
        and "onnx/model.onnx" in msg
    )
