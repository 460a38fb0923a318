"""The model zoo: the built-in models.json, name resolution, EDGECLIP_ZOO merging, validation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from edgeclip.errors import InputError, ModelNotFoundError
from edgeclip.zoo import ARCH_KEYS, find_source, get_model_info, list_models, resolve_name

TINYCLIP = {
    "tinyclip-8m": "wkcn/TinyCLIP-ViT-8M-16-Text-3M-YFCC15M",
    "tinyclip-39m": "wkcn/TinyCLIP-ViT-39M-16-Text-19M-YFCC15M",
    "tinyclip-40m": "wkcn/TinyCLIP-ViT-40M-32-Text-19M-LAION400M",
    "tinyclip-61m": "wkcn/TinyCLIP-ViT-61M-32-Text-29M-LAION400M",
    "tinyclip-auto-22m": "wkcn/TinyCLIP-auto-ViT-22M-32-Text-10M-LAION400M",
    "tinyclip-auto-45m": "wkcn/TinyCLIP-auto-ViT-45M-32-Text-18M-LAION400M",
    "tinyclip-auto-63m": "wkcn/TinyCLIP-auto-ViT-63M-32-Text-31M-LAION400M",
}


def _entry(**over):
    base = {
        "description": "my model",
        "license": "Apache-2.0",
        "aliases": ["mine"],
        "architecture": {k: (None if k != "hidden_act" else "gelu") for k in ARCH_KEYS},
        "sources": [
            {
                "kind": "hf-checkpoint",
                "repo": "me/model",
                "revision": None,
                "files": ["config.json"],
            }
        ],
    }
    base.update(over)
    return base


def _write(tmp_path, name, models):
    path = tmp_path / name
    path.write_text(json.dumps({"models": models}))
    return path


def test_builtin_zoo_has_the_tinyclip_table_and_clip_b32():
    names = [m["name"] for m in list_models()]
    assert set(TINYCLIP) | {"clip-vit-b32"} <= set(names)
    for name, repo in TINYCLIP.items():
        src = find_source(get_model_info(name), "hf-checkpoint")
        assert src["repo"] == repo
    assert (
        find_source(get_model_info("clip-vit-b32"), "hf-checkpoint")["repo"]
        == "openai/clip-vit-base-patch32"
    )


def test_tinyclip_8m_entry_pins_the_real_files():
    info = get_model_info("tinyclip-8m")
    assert info["license"] == "MIT"
    hf = find_source(info, "hf-checkpoint")
    assert hf["revision"] == "a2a8c6eaa2549ad66eb7c31b85022bf58273a26c"
    assert {f["path"] for f in hf["files"]} == {
        "config.json",
        "pytorch_model.bin",
        "preprocessor_config.json",
    }
    onnx_src = find_source(info, "hub-onnx")
    assert onnx_src["repo"] == "onnx-community/TinyCLIP-ViT-8M-16-Text-3M-YFCC15M-ONNX"
    assert onnx_src["revision"] == "9463a9c508a344c837ffefe9d724f3827bf2dc79"
    model = [f for f in onnx_src["files"] if f["role"] == "model"][0]
    assert model == {
        "role": "model",
        "path": "onnx/model.onnx",
        "size": 94071688,
        "sha256": "31d28cb07209533d10fc4fef73ac324ce17de6741a2372e7e1531a4ac8fdaeb2",
    }
    # the TinyCLIP-8M open_clip config: 224 px, patch 16, 256 x 10 x 4 vision, 256 x 3 x 4 text, GELU
    arch = info["architecture"]
    assert (arch["vision_width"], arch["vision_layers"], arch["vision_heads"]) == (256, 10, 4)
    assert (arch["text_width"], arch["text_layers"], arch["text_heads"]) == (256, 3, 4)
    assert (arch["embed_dim"], arch["image_size"], arch["patch_size"], arch["hidden_act"]) == (
        512,
        224,
        16,
        "gelu",
    )
    assert info["published"]["imagenet_zero_shot_top1"] == 41.1


def test_every_entry_has_published_numbers_and_unpinned_ones_say_so():
    for info in list_models():
        pub = info["published"]
        assert {"imagenet_zero_shot_top1", "gmacs", "pairs_per_s", "source"} <= set(pub)
        for src in info["sources"]:
            if src["kind"] in ("hub-onnx", "hf-checkpoint") and src["revision"] is None:
                assert "no pinned commit" in info["notes"].lower(), info["name"]


def test_names_are_case_insensitive_and_aliases_resolve():
    assert resolve_name("TinyCLIP-8M") == "tinyclip-8m"
    assert resolve_name("wkcn/TinyCLIP-ViT-8M-16-Text-3M-YFCC15M") == "tinyclip-8m"
    assert get_model_info("  ViT-B/32 ")["name"] == "clip-vit-b32"


def test_unknown_name_suggests_close_matches_and_a_local_dir():
    with pytest.raises(ModelNotFoundError) as err:
        get_model_info("tinyclip-8n")
    msg = str(err.value)
    assert "'tinyclip-8n'" in msg and "Did you mean" in msg and "tinyclip-8m" in msg
    assert "edgeclip.load('/path/to/" in msg and "EDGECLIP_ZOO" in msg
    with pytest.raises(InputError):
        resolve_name("")


def test_list_models_returns_copies():
    first = list_models()
    first[0]["architecture"]["embed_dim"] = -1
    assert list_models()[0]["architecture"]["embed_dim"] != -1


def test_extra_zoo_files_are_merged_over_the_builtin_one(tmp_path, monkeypatch):
    a = _write(tmp_path, "a.json", {"my-model": _entry()})
    override = _entry(description="my mirror of tinyclip-8m", aliases=[])
    b = _write(
        tmp_path, "b.json", {"tinyclip-8m": override, "my-model": _entry(description="later wins")}
    )
    monkeypatch.setenv("EDGECLIP_ZOO", os.pathsep.join([str(a), str(b)]))
    assert get_model_info("MINE")["description"] == "later wins"
    assert get_model_info("tinyclip-8m")["description"] == "my mirror of tinyclip-8m"
    assert get_model_info("tinyclip-8m")["zoo_file"] == str(b)
    assert "tinyclip-39m" in {m["name"] for m in list_models()}  # the rest stays
    monkeypatch.delenv("EDGECLIP_ZOO")
    assert "my-model" not in {m["name"] for m in list_models()}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"license": None}, "models.bad.license"),
        ({"architecture": {"embed_dim": 512}}, "models.bad.architecture.image_size"),
        ({"sources": []}, "models.bad.sources"),
        (
            {"sources": [{"kind": "hub-onnx", "repo": "a/b", "revision": "main", "files": ["x"]}]},
            "models.bad.sources[0].revision",
        ),
        (
            {
                "sources": [
                    {
                        "kind": "hub-onnx",
                        "repo": "a/b",
                        "revision": None,
                        "files": [{"path": "x", "sha256": "abc"}],
                    }
                ]
            },
            "models.bad.sources[0].files[0].sha256",
        ),
        (
            {"sources": [{"kind": "hf-checkpoint", "repo": "nonsense", "files": ["x"]}]},
            "models.bad.sources[0].repo",
        ),
    ],
)
def test_invalid_entries_name_the_file_and_the_key(tmp_path, monkeypatch, change, key):
    path = _write(tmp_path, "bad.json", {"bad": _entry(**change)})
    monkeypatch.setenv("EDGECLIP_ZOO", str(path))
    with pytest.raises(InputError) as err:
        list_models()
    assert str(path) in str(err.value) and key in str(err.value)


def test_unreadable_or_missing_zoo_files_are_clear_errors(tmp_path, monkeypatch):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    monkeypatch.setenv("EDGECLIP_ZOO", str(broken))
    with pytest.raises(InputError, match=re.escape(str(broken))):
        list_models()
    monkeypatch.setenv("EDGECLIP_ZOO", str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="does not exist"):
        list_models()


def test_zoo_and_hub_modules_import_no_heavy_dependency():
    code = (
        "import sys, edgeclip.zoo, edgeclip.hub, edgeclip.hub_bundle; "
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'huggingface_hub') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
