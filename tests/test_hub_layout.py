"""A zoo model end to end through ``edgeclip.load`` on the loopback hub (tests/hubserver.py):
repositories whose files are not what the zoo entry says, and the bundle edgeclip builds from
them (its own cache) found damaged or half deleted later, or with nowhere to go.

The combined graph is built here with ``onnx.helper`` (no torch): a toy CLIP with the inputs and
outputs of a transformers CLIPModel export, run for real by ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hubserver import TINY_REPO, TINY_REV, hub_env
from test_index_crash import shared_dir, unprivileged  # noqa: F401  (shared_dir: a fixture)

import edgeclip
from edgeclip.errors import InputError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ARCH = {"embed_dim": 16, "image_size": 32, "patch_size": 8, "vision_width": 16,
        "vision_layers": 1, "vision_heads": 1, "text_width": 16, "text_layers": 1,
        "text_heads": 1, "context_length": 77, "vocab_size": 49408, "hidden_act": "gelu"}  # fmt: skip
PP = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32},
      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}  # fmt: skip


def _combined_onnx() -> bytes:
    """pixel_values -> channel means @ W -> L2 (image_embeds); input_ids -> mean of an embedding
    table -> L2 (text_embeds); logits = exp(logit_scale) * image @ text.T."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 16)).astype(np.float32), "w_img"),
        numpy_helper.from_array(rng.standard_normal((49408, 16)).astype(np.float32), "tok"),
        numpy_helper.from_array(np.array(2.0, np.float32), "logit_scale"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["pixel_values"], ["pm"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pm", "w_img"], ["pi"]),
        helper.make_node("LpNormalization", ["pi"], ["image_embeds"], axis=-1, p=2),
        helper.make_node("Gather", ["tok", "input_ids"], ["te"]),
        helper.make_node("ReduceMean", ["te"], ["tm"], axes=[1], keepdims=0),
        helper.make_node("LpNormalization", ["tm"], ["text_embeds"], axis=-1, p=2),
        helper.make_node("Exp", ["logit_scale"], ["scale"]),
        helper.make_node("Transpose", ["text_embeds"], ["tt"], perm=[1, 0]),
        helper.make_node("MatMul", ["image_embeds", "tt"], ["raw"]),
        helper.make_node("Mul", ["raw", "scale"], ["logits_per_image"]),
        helper.make_node("Transpose", ["logits_per_image"], ["logits_per_text"], perm=[1, 0]),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        nodes,
        "toy-clip",
        [helper.make_tensor_value_info("input_ids", i64, ["T", 77]),
         helper.make_tensor_value_info("pixel_values", f32, ["I", 3, 32, 32]),
         helper.make_tensor_value_info("attention_mask", i64, ["T", 77])],
        [helper.make_tensor_value_info("logits_per_image", f32, ["I", "T"]),
         helper.make_tensor_value_info("logits_per_text", f32, ["T", "I"]),
         helper.make_tensor_value_info("text_embeds", f32, ["T", 16]),
         helper.make_tensor_value_info("image_embeds", f32, ["I", 16])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


MODEL = _combined_onnx()
GOOD = {"onnx/model.onnx": MODEL, "config.json": b"{}",
        "preprocessor_config.json": json.dumps(PP).encode()}  # fmt: skip


@pytest.fixture
def zoo(monkeypatch, tmp_path):
    """A zoo file naming 'toy' (the loopback repo; files checked against the hub's etags) and
    edgeclip's home in tmp; returns the folder the bundles are built in."""
    files = [{"role": "model", "path": "onnx/model.onnx"},
             {"role": "config", "path": "config.json"},
             {"role": "preprocessor", "path": "preprocessor_config.json"}]  # fmt: skip
    source = {"kind": "hub-onnx", "repo": TINY_REPO, "revision": TINY_REV, "files": files}
    path = tmp_path / "zoo.json"
    path.write_text(json.dumps({"models": {"toy": {
        "description": "test", "license": "MIT", "architecture": ARCH, "sources": [source]}}}))  # fmt: skip
    monkeypatch.setenv("EDGECLIP_ZOO", str(path))
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGECLIP_CACHE", raising=False)
    return tmp_path / "home" / "bundles"


def _serve(monkeypatch, tmp_path, files):
    return hub_env(monkeypatch, tmp_path, {TINY_REPO: {TINY_REV: files}})


def test_the_toy_repo_loads_and_classifies(zoo, monkeypatch, tmp_path):
    with _serve(monkeypatch, tmp_path, GOOD):
        model = edgeclip.load("toy")
    vec = model.encode_text(["a cat"])
    assert vec.shape == (1, 16) and np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)
    assert (zoo / f"toy@{TINY_REV}" / "manifest.json").is_file()


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\n"


@pytest.mark.parametrize(
    "file, data, says",
    [
        ("onnx/model.onnx", LFS_POINTER, "is a Git LFS pointer"),  # DecodeError traceback before
        ("onnx/model.onnx", b"\xff" * 64, "is not an ONNX model"),  # DecodeError traceback
        ("config.json", b"<html>sign in</html>", "is not JSON"),  # JSONDecodeError traceback
        ("config.json", b"[1, 2]", "holds a JSON list, not an object"),  # AttributeError
        ("preprocessor_config.json", b'{"image_mean": "red"}', "is not usable"),  # unnamed file
    ],
    ids=["lfs-pointer", "not-onnx", "html-config", "list-config", "bad-mean"],
)
def test_a_repo_whose_files_are_not_a_clip_export_is_named(zoo, monkeypatch, tmp_path, file, data, says):  # fmt: skip
    with _serve(monkeypatch, tmp_path, {**GOOD, file: data}):
        with pytest.raises(InputError) as err:
            edgeclip.load("toy")
    msg = str(err.value)
    assert f"'toy': {TINY_REPO}@{TINY_REV}/{file} {says}" in msg and "zoo entry" in msg
    assert not zoo.exists() or list(zoo.iterdir()) == []  # no half bundle, no temp folder


def _loaded_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(RuntimeWarning, match="is damaged .* rebuilt from the downloaded files"):
        return edgeclip.load("toy")


@pytest.mark.parametrize("damage", ["truncate-graph", "garble-manifest"])
def test_a_damaged_zoo_bundle_is_rebuilt_offline_from_the_download(zoo, monkeypatch, tmp_path, damage):  # fmt: skip
    # before: "failed verification ... re-download or re-convert it" on every load, for ever
    with _serve(monkeypatch, tmp_path, GOOD) as hub:
        before = edgeclip.load("toy").encode_text(["a dog"])
        hub.clear_log()
        folder = zoo / f"toy@{TINY_REV}"
        if damage == "truncate-graph":
            graph = folder / "onnx-fp32" / "image.onnx"
            graph.write_bytes(graph.read_bytes()[:-10])
        else:
            (folder / "manifest.json").write_text("{")
        model = _loaded_offline(monkeypatch)
        assert hub.requests == []  # rebuilt from the HF cache, no network
    np.testing.assert_allclose(model.encode_text(["a dog"]), before, atol=1e-6)
    assert [p.name for p in zoo.iterdir()] == [folder.name]  # nothing left aside


def test_the_command_prints_a_warning_as_one_line_for_people(zoo, monkeypatch, tmp_path):
    with _serve(monkeypatch, tmp_path, GOOD):
        edgeclip.load("toy")
    (zoo / f"toy@{TINY_REV}" / "manifest.json").write_text("{")
    run = subprocess.run([sys.executable, "-m", "edgeclip", "embed", "--text", "a dog", "-m", "toy",
                          "-o", str(tmp_path / "v.npy")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    # before: ".../edgeclip/loader.py:94: RuntimeWarning: the bundle ..." and a line of source
    assert run.stderr.startswith("edgeclip: warning: the bundle "), run.stderr
    assert "RuntimeWarning" not in run.stderr and "warnings.warn" not in run.stderr
    assert np.load(tmp_path / "v.npy").shape == (1, 16)


def test_a_killed_builds_leftover_folders_are_swept_but_a_live_one_is_kept(zoo, monkeypatch, tmp_path):
    # before: each killed build left a hidden folder (a whole bundle) for ever
    from edgeclip.scratch import owner_tag

    name, host = f"toy@{TINY_REV}", owner_tag().split("-")[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    zoo.mkdir(parents=True)
    old = zoo / f".{name}.partial-{host}-{dead}-k1ll3d"  # its process is gone
    live = zoo / f".{name}.partial-{owner_tag()}-l1ve"  # this process's: a build in progress
    other = zoo / f".other.partial-{host}-{dead}-x"  # another model's, not this build's to sweep
    for folder in (old, live, other):
        (folder / "onnx-fp32").mkdir(parents=True)
    with _serve(monkeypatch, tmp_path, GOOD):
        edgeclip.load("toy")
    assert sorted(p.name for p in zoo.iterdir()) == sorted([name, live.name, other.name])


def test_a_bundle_folder_left_without_its_manifest_is_rebuilt(zoo, monkeypatch, tmp_path):
    # before: OSError "Directory not empty" from os.replace, a traceback on every load
    with _serve(monkeypatch, tmp_path, GOOD):
        edgeclip.load("toy")
        (zoo / f"toy@{TINY_REV}" / "manifest.json").unlink()  # an interrupted `rm -r`
        model = edgeclip.load("toy")
    assert model.encode_image([np.zeros((40, 40, 3), np.uint8)]).shape == (1, 16)
    assert [p.name for p in zoo.iterdir()] == [f"toy@{TINY_REV}"]


@pytest.mark.parametrize("var", ["EDGECLIP_CACHE", "EDGECLIP_HOME"])
def test_a_bundle_cache_that_is_a_file_is_named_before_downloading(zoo, monkeypatch, tmp_path, var):  # fmt: skip
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.setenv(var, str(a_file))  # before: FileExistsError traceback after the download
    with _serve(monkeypatch, tmp_path, GOOD) as hub:
        with pytest.raises(InputError) as err:
            edgeclip.load("toy")
        assert [r for r in hub.requests if "/resolve/" in r[1]] == []
    assert f"{a_file}" in str(err.value) and f"Set {var} to a folder" in str(err.value)


@pytest.mark.parametrize("name", ["", None, 8])
def test_an_empty_model_name_is_refused_not_read_as_the_current_folder(zoo, monkeypatch, tmp_path, name):  # fmt: skip
    with _serve(monkeypatch, tmp_path, GOOD):
        edgeclip.load("toy")
    monkeypatch.chdir(zoo / f"toy@{TINY_REV}")  # a bundle: "" used to load it silently
    with pytest.raises(InputError, match="the model name or path is .*tinyclip-8m"):
        edgeclip.load(name)


def _external(location: str = "model.onnx_data") -> tuple[bytes, bytes]:
    """MODEL saved as a graph plus an external data file (as exports too big for one file are)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "model.onnx"
        model = onnx.load_from_string(MODEL)
        onnx.save(model, str(graph), save_as_external_data=True, location="model.onnx_data",
                  size_threshold=0)  # fmt: skip
        data = (Path(tmp) / "model.onnx_data").read_bytes()
        model = onnx.load(str(graph), load_external_data=False)
        for init in model.graph.initializer:  # point them wherever the test says
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
        return model.SerializeToString(), data


def _zoo_files(zoo_path, extra):
    entry = json.loads(zoo_path.read_text())
    entry["models"]["toy"]["sources"][0]["files"] += extra
    zoo_path.write_text(json.dumps(entry))


def test_an_export_with_external_data_loads_from_the_hf_cache(zoo, monkeypatch, tmp_path):
    # before: onnx refused the data file because the HF cache holds it as a symlink
    # ("should be stored in .../model.onnx_data, but it is a symbolic link"), a traceback
    with _serve(monkeypatch, tmp_path, GOOD):
        reference = edgeclip.load("toy").encode_text(["a red car"])
    graph, data = _external()
    _zoo_files(tmp_path / "zoo.json", [{"path": "onnx/model.onnx_data"}])
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home2"))
    files = {**GOOD, "onnx/model.onnx": graph, "onnx/model.onnx_data": data}
    with _serve(monkeypatch, tmp_path / "second", files):
        model = edgeclip.load("toy")
    np.testing.assert_allclose(model.encode_text(["a red car"]), reference, atol=1e-6)


@pytest.mark.parametrize("location", ["model.onnx_data", "../../../../etc/passwd"])
def test_external_data_the_zoo_does_not_list_is_named_not_read(zoo, monkeypatch, tmp_path, location):  # fmt: skip
    graph, data = _external(location)
    files = {**GOOD, "onnx/model.onnx": graph, "onnx/model.onnx_data": data}
    with _serve(monkeypatch, tmp_path, files):
        with pytest.raises(InputError) as err:
            edgeclip.load("toy")
    msg = str(err.value)
    assert f"{TINY_REPO}@{TINY_REV}/onnx/model.onnx keeps the weights of" in msg
    assert "which the zoo entry does not list: add {\"path\": " in msg


def test_a_config_whose_image_size_is_not_the_crop_is_named(zoo, monkeypatch, tmp_path):
    # before: the bundle was written, then refused on every load as "edited or damaged"
    config = json.dumps({"vision_config": {"image_size": 224}}).encode()
    with _serve(monkeypatch, tmp_path, {**GOOD, "config.json": config}):
        with pytest.raises(InputError, match="config.json has vision_config.image_size 224 but "
                                             "the preprocessor crops to 32"):  # fmt: skip
            edgeclip.load("toy")
    assert not zoo.exists() or list(zoo.iterdir()) == []


def test_a_damaged_bundle_in_a_read_only_folder_is_named_not_a_permission_traceback(
    zoo, monkeypatch, tmp_path, shared_dir  # noqa: F811
):
    from edgeclip.errors import EdgeclipError
    from edgeclip.hub_bundle import discard_bundle

    with _serve(monkeypatch, tmp_path, GOOD):
        edgeclip.load("toy")
    folder = shared_dir / "bundles" / f"toy@{TINY_REV}"
    shutil.copytree(zoo / folder.name, folder)  # root's 0755 folders: read-only for nobody
    with unprivileged():
        with pytest.raises(EdgeclipError) as err:
            discard_bundle(folder)
    assert str(folder) in str(err.value) and "delete it and load the model again" in str(err.value)
    assert (folder / "manifest.json").is_file()  # left as it was
