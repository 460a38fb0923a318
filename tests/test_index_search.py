"""Search quality with a CLIP trained here (``benchmarks/index_model.py``): text queries in the
procedural captions' vocabulary must return mostly the right pictures from a real file tree.

The model is trained once (a few hundred CPU steps) and kept under EDGECLIP_HOME/test-models, keyed
by its recipe, so later sessions reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training the test model needs torch (extra: distill)")

from benchmarks import index_model  # noqa: E402
from edgeclip.index import Index  # noqa: E402

PER_CLASS = 10


@pytest.fixture(scope="session")
def trained_bundle(request) -> Path:
    from edgeclip.paths import edgeclip_home

    recipe = json.dumps({"arch": index_model.ARCH, "lr": index_model.LR, "steps": STEPS}, sort_keys=True)
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    # kept between runs (CI runs with -p no:cacheprovider, so not pytest's cache), by recipe
    out = edgeclip_home() / "test-models" / f"edgeclip-index-model-{key}"
    out.mkdir(parents=True, exist_ok=True)
    bundle, _ = index_model.trained_bundle(out, steps=STEPS)
    return bundle


STEPS = 400


@pytest.fixture(scope="session")
def shapes_tree(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``PER_CLASS`` pictures of every colour x shape, as JPEG and PNG files; path -> label."""
    from converters.calibration import synthetic_pairs

    root = tmp_path_factory.mktemp("shapes")
    images, _, labels = synthetic_pairs(48 * PER_CLASS, 96, seed=7)
    truth = {}
    for i, (im, label) in enumerate(zip(images, labels)):
        path = root / label.split()[0] / f"{i:04d}.{'jpg' if i % 2 else 'png'}"
        path.parent.mkdir(exist_ok=True)
        im.save(path, quality=95)
        truth[str(path)] = label
    return root, truth


def test_text_queries_return_mostly_the_right_pictures(trained_bundle, shapes_tree, tmp_path):
    from converters.calibration import synthetic_labels

    root, truth = shapes_tree
    with Index(tmp_path / "shapes.db", trained_bundle) as ix:
        assert ix.update([root]).embedded == len(truth)
        precision, colour = {}, {}
        for label in synthetic_labels():
            hits = ix.search(f"a photo of a {label}", k=10)
            precision[label] = np.mean([truth[h.path] == label for h in hits])
            colour[label] = np.mean([truth[h.path].split()[0] == label.split()[0] for h in hits])
    mean = float(np.mean(list(precision.values())))
    print(f"precision@10: 'a photo of a red circle' {precision['red circle']:.2f}; mean over all "
          f"{len(precision)} colour x shape queries {mean:.3f} (chance {1 / len(precision):.3f}); "
          f"colour right {np.mean(list(colour.values())):.3f}; colour missed: "
          f"{[k for k, v in colour.items() if v < 0.5]}")
    assert precision["red circle"] >= 0.6  # "mostly red circles"
    assert mean >= 5 / len(precision)  # five times chance over every query
    assert np.mean(list(colour.values())) >= 0.8


def test_search_by_example_and_planted_duplicates(trained_bundle, shapes_tree, tmp_path):
    from PIL import Image

    root, truth = shapes_tree
    tree = tmp_path / "tree"
    shutil.copytree(root, tree)
    originals = sorted(tree.rglob("*.png"))[:3]
    planted = []
    for i, src in enumerate(originals):
        copy = tree / "inbox" / f"copy{i}{src.suffix}"
        copy.parent.mkdir(exist_ok=True)
        if i == 0:
            shutil.copyfile(src, copy)  # byte-identical
        else:  # re-encoded at another size and quality: the same photo, other bytes
            Image.open(src).resize((88, 88)).save(copy.with_suffix(".jpg"), quality=85)
            copy = copy.with_suffix(".jpg")
        planted.append({str(src), str(copy)})
    with Index(tmp_path / "dupes.db", trained_bundle) as ix:
        ix.update([tree])
        for pair in planted:
            src = next(p for p in pair if "inbox" not in p)
            top2 = {h.path for h in ix.search(Path(src), k=2)}
            assert top2 == pair
        groups = [{h.path for h in g} for g in ix.duplicates(threshold=0.99)]
        for pair in planted:
            assert any(pair <= g for g in groups), pair
        exact = [{h.path for h in g} for g in ix.duplicates(threshold=0.99999)]  # byte copies: 1.0
        assert any(planted[0] <= g for g in exact)
    assert os.path.exists(tmp_path / "dupes.db")
