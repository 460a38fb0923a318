"""How a user names a zoo model: the hub repo id copied off its hub page, a typo, or the name
written as a path. The zoo is the shipped models.json (no network: names only)."""

from __future__ import annotations

import json

import pytest

from edgeclip.errors import InputError, ModelNotFoundError
from edgeclip.loader import zoo_info
from edgeclip.zoo import find_source, get_model_info, list_models, resolve_name


def _suggested(name: str) -> list[str]:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_name(name)
    msg = str(err.value)
    assert "Did you mean: " in msg, msg
    return msg.split("Did you mean: ")[1].split("?")[0].split(", ")


def test_the_repo_id_of_a_models_hub_source_names_that_model():
    # before: "unknown model ... Did you mean: tinyclip-39m, tinyclip-8m?" for the very repo
    # edgeclip downloads tinyclip-8m from
    repo = find_source(get_model_info("tinyclip-8m"), "hub-onnx")["repo"]
    assert repo == "onnx-community/TinyCLIP-ViT-8M-16-Text-3M-YFCC15M-ONNX"
    assert resolve_name(repo) == "tinyclip-8m"
    assert resolve_name(repo.upper()) == "tinyclip-8m"
    for entry in list_models():  # every hub source's repo id, every model
        for src in entry["sources"]:
            if src["kind"] in ("hub-onnx", "hf-checkpoint"):
                assert resolve_name(src["repo"]) == entry["name"]


@pytest.mark.parametrize(
    "typo, best",
    [
        ("tinyclip-auto-45", "tinyclip-auto-45m"),  # was listed after tinyclip-auto-22m
        ("tinyclip-auto-6", "tinyclip-auto-63m"),
        ("onnx-community/TinyCLIP-ViT-8M-16-Text-3M-YFCC15M", "tinyclip-8m"),  # was after 39m
        ("tinyclp-8m", "tinyclip-8m"),
    ],
)
def test_the_closest_suggestion_comes_first(typo, best):
    hints = _suggested(typo)
    assert hints[0] == best and len(hints) == len(set(hints))


def test_a_zoo_name_written_as_a_missing_path_says_how_to_name_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as err:
        zoo_info("./tinyclip-8m")  # before: "tinyclip-8m does not exist" and no word on the zoo
    msg = str(err.value)
    assert str(tmp_path / "tinyclip-8m") in msg and "does not exist" in msg
    assert "load('tinyclip-8m')" in msg
    with pytest.raises(ModelNotFoundError, match="`edgeclip models` lists the zoo"):
        zoo_info("./not-a-model")


@pytest.mark.parametrize("bad", ["", "/config.json", "onnx//model.onnx", "../config.json",
                                 "./config.json", "onnx\\model.onnx", "onnx/"])  # fmt: skip
@pytest.mark.parametrize("form", ["string", "object"])
def test_a_zoo_file_path_outside_the_repo_or_malformed_is_refused_by_key(tmp_path, monkeypatch, bad, form):  # fmt: skip
    # before: "" was an IsADirectoryError traceback, "../x" could resolve outside the snapshot
    # once cached, the rest went to the hub as they were and came back "has no ..."
    entry = get_model_info("tinyclip-8m")
    spec = bad if form == "string" else {"path": bad}
    entry["sources"] = [{"kind": "hub-onnx", "repo": "org/name", "revision": None, "files": [spec]}]
    for key in ("name", "zoo_file"):
        entry.pop(key)
    zoo = tmp_path / "zoo.json"
    zoo.write_text(json.dumps({"models": {"mine": entry}}))
    monkeypatch.setenv("EDGECLIP_ZOO", str(zoo))
    with pytest.raises(InputError) as err:
        resolve_name("mine")
    msg = str(err.value)
    assert str(zoo) in msg and "models.mine.sources[0].files[0]" in msg
