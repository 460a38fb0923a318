"""Search quality with a CLIP trained here (``benchmarks/index_model.py``): text queries in the
procedural captions' vocabulary must return mostly the right pictures from a real file tree.

The model is trained once (a few hundred CPU steps) and kept under EDGECLIP_HOME/test-models, keyed
by its recipe, so later sessions reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training the test model needs torch (extra: distill)")

from benchmarks import index_model, search_quality  # noqa: E402
from edgeclip.errors import InputError  # noqa: E402
from edgeclip.index import Index  # noqa: E402


@pytest.fixture(scope="session")
def trained_bundle(request) -> Path:
    return index_model.cached_bundle(STEPS)


STEPS = search_quality.STEPS


@pytest.fixture(scope="session")
def shapes_tree(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """480 pictures, 10 of each of the 8 colours x 6 shapes, JPEG and PNG, one folder per
    colour; path -> label."""
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    return root, search_quality.shapes_tree(root)


def test_text_queries_return_mostly_the_right_pictures(trained_bundle, shapes_tree, tmp_path):
    root, truth = shapes_tree
    with Index(tmp_path / "shapes.db", trained_bundle) as ix:
        assert ix.update([root]).embedded == len(truth)
        precision, colour = {}, {}
        for label in sorted(set(truth.values())):
            hits = ix.search(f"a photo of a {label}", k=10)
            precision[label] = np.mean([truth[h.path] == label for h in hits])
            colour[label] = np.mean([truth[h.path].split()[0] == label.split()[0] for h in hits])
    mean = float(np.mean(list(precision.values())))
    print(f"precision@10: 'a photo of a red circle' {precision['red circle']:.2f}; mean over the "
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


@pytest.fixture(scope="module")
def shapes_db(trained_bundle, shapes_tree, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("query") / "shapes.db"
    with Index(db, trained_bundle) as ix:
        ix.update([shapes_tree[0]])
    return db


def test_add_and_subtract_move_a_query_to_another_colour(trained_bundle, shapes_tree, shapes_db):
    """rclip's arithmetic: "a photo of a red circle" − "a red shape" + "a blue shape" finds blue
    pictures, which the query alone never returns (this model knows colours far better than
    shapes, so colour is what is checked)."""
    _, truth = shapes_tree
    moved, before = [], []
    with Index(shapes_db, trained_bundle) as ix:
        for c, c2 in (("red", "blue"), ("green", "yellow"), ("white", "black")):
            query = f"a photo of a {c} circle"
            plus, minus = f"a photo of a {c2} shape", f"a photo of a {c} shape"
            before.append(np.mean([truth[h.path].startswith(c2) for h in ix.search(query, k=10)]))
            hits = ix.search(query, k=10, add=[plus], subtract=minus)  # one term need not be a list
            moved.append(np.mean([truth[h.path].startswith(c2) for h in hits]))
            unit = [v / np.linalg.norm(v) for v in (ix.embed_query(t) for t in (query, plus, minus))]
            by_hand = unit[0] + unit[1] - unit[2]
            np.testing.assert_allclose(ix.query_vector(query, [plus], [minus]),
                                       by_hand / np.linalg.norm(by_hand), atol=1e-6)  # fmt: skip
        with pytest.raises(InputError, match="cancel out"):
            ix.search("a photo of a red circle", subtract=["a photo of a red circle"])
    print(f"share of the added colour in the top 10: query alone {before}, with add/subtract {moved}")
    assert max(before) <= 0.2 and min(moved) >= 0.8


def test_under_keeps_to_one_folder_and_the_cli_prints_paths(trained_bundle, shapes_tree, shapes_db,
                                                            capsys):  # fmt: skip
    from edgeclip.index.cli import main as cli

    root = shapes_tree[0]
    with Index(shapes_db, trained_bundle) as ix:
        hits = ix.search("a photo of a red circle", k=15, under=root / "blue")
    assert len(hits) == 15 and all(h.path.startswith(str(root / "blue") + os.sep) for h in hits)
    args = ["search", "a photo of a red circle", "--db", str(shapes_db), "-k", "5"]
    assert cli([*args, "--under", str(root / "blue"), "--paths"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [h.path for h in hits[:5]]
    example = next(p for p, label in shapes_tree[1].items() if label.startswith("yellow"))
    assert cli([*args, "--add", example, "--subtract", "a photo of a red shape", "--json"]) == 0
    assert any(shapes_tree[1][h["path"]].startswith("yellow") for h in json.loads(capsys.readouterr().out))
    assert cli([*args, "--add", str(root / "missing.jpg")]) == 2
    assert f"--add {root / 'missing.jpg'}: no such image file" in capsys.readouterr().err
    assert cli([*args, "--under", str(root / "nowhere")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and f"is under {root / 'nowhere'}; check the folder" in captured.err
