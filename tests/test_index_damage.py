"""``edgeclip.index`` against damage from outside: file names that are not UTF-8, folders whose
names differ only in case, and a vectors file that lost rows. Real files, the micro bundle."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.index import Index
from edgeclip.index.cli import main as cli


def _photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from converters.calibration import synthetic_pairs

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(synthetic_pairs(n, 64, seed)[0]):
        paths.append(folder / f"img{i:02d}.png")
        im.save(paths[-1])
    return paths


def test_a_name_that_is_not_utf8_is_reported_and_the_rest_indexed(tmp_path, micro_bundle, capsys):
    good = _photos(tmp_path / "p", 2)
    bad = os.path.join(os.fsencode(tmp_path / "p"), b"z_\xff.png")  # latin-1 byte, not UTF-8
    shutil.copyfile(good[0], bad)
    os.mkdir(os.path.join(os.fsencode(tmp_path / "p"), b"caf\xe9"))
    shutil.copyfile(good[1], os.path.join(os.fsencode(tmp_path / "p"), b"caf\xe9", b"x.png"))
    db = tmp_path / "lib.db"
    code = cli(["index", str(tmp_path / "p"), "--db", str(db), "--model", str(micro_bundle)])
    err = capsys.readouterr().err
    assert code == 1  # some inputs could not be indexed; no traceback
    assert "z_\\xff.png: the name is not valid UTF-8" in err and "rename it" in err
    assert "caf\\xe9: the name is not valid UTF-8" in err
    with Index(db, micro_bundle) as ix:
        assert sorted(Path(r.path).name for r in ix.store.rows()) == ["img00.png", "img01.png"]
        with pytest.raises(Exception, match="not valid UTF-8.*rename it"):
            ix.add([os.fsdecode(bad)])


def test_folders_differing_only_in_case_are_separate_roots(tmp_path, micro_bundle):
    upper = _photos(tmp_path / "Photos", 1)
    lower = _photos(tmp_path / "photos", 2, seed=1)
    with Index(tmp_path / "lib.db", micro_bundle) as ix:
        assert ix.update([tmp_path / "Photos", tmp_path / "photos"]).embedded == 3
        again = ix.update([tmp_path / "Photos"], prune=True)
        assert again.pruned == 0 and again.missing == 0 and again.unchanged == 1
        assert {r.path for r in ix.store.rows()} == {str(p) for p in upper + lower}
        assert ix.remove([tmp_path / "Photos"]) == 1
        assert {r.path for r in ix.store.rows()} == {str(p) for p in lower}


@pytest.mark.parametrize("keep_rows", [0, 3])
def test_a_vectors_file_that_lost_rows_is_refilled_by_the_next_run(tmp_path, micro_bundle, keep_rows):
    photos = _photos(tmp_path / "p", 6)
    db = tmp_path / "lib.db"
    with Index(db, micro_bundle) as ix:
        ix.update([tmp_path / "p"])
        vectors = ix.vectors.path
        reference = np.asarray(ix.vectors.matrix(6), np.float32).copy()
        query = reference[4]
    with open(vectors, "r+b") as f:  # deleted, truncated, or restored from an older backup
        f.truncate(keep_rows * reference.shape[1] * 2)
    with Index(db, micro_bundle) as ix:
        with pytest.warns(UserWarning, match=f"held {keep_rows} of the index's 6 vectors"):
            report = ix.update([tmp_path / "p"])
        assert report.embedded == 6 - keep_rows and report.unchanged == keep_rows
        hits = ix.search_vector(query, k=6)
        assert hits[0].path == str(photos[4]) and hits[0].score == pytest.approx(1.0, abs=2e-3)
        assert all(h.score != 0.0 for h in hits)
        assert ix.stats()["slots"] == 6


def test_max_pixels_reaches_png_decoding_and_search(tmp_path, micro_bundle, capsys):
    """A PNG above the default bomb limit (9500 x 9500 = 90.25 M > 89.48 M pixels) is refused by
    default and indexed, and searchable by, with a raised --max-pixels."""
    from PIL import Image

    (tmp_path / "p").mkdir()
    big = tmp_path / "p" / "panorama.png"
    Image.new("RGB", (9500, 9500), (200, 30, 30)).save(big, compress_level=1)
    db, model = str(tmp_path / "lib.db"), ["--model", str(micro_bundle)]
    assert cli(["index", str(tmp_path / "p"), "--db", db, *model, "--quiet"]) == 1
    assert "exceeds the limit of 89,478,485" in capsys.readouterr().err
    raised = ["--max-pixels", "100000000"]
    assert cli(["index", str(tmp_path / "p"), "--db", db, *model, "--quiet", *raised]) == 0
    assert "1 embedded" in capsys.readouterr().out
    assert cli(["search", "--image", str(big), "--db", db, "-k", "1", *raised]) == 0
    assert capsys.readouterr().out.startswith("1.0000")


def test_index_options_below_one_are_refused_by_name(tmp_path, micro_bundle, capsys):
    for option in ("--batch-size", "--workers", "--commit-every", "--max-pixels"):
        with pytest.raises(SystemExit) as exit_:
            cli(["index", str(tmp_path), "--db", str(tmp_path / "lib.db"), option, "0"])
        assert exit_.value.code == 2
        assert f"argument {option}: expected a whole number of at least 1, got '0'" in capsys.readouterr().err


def test_the_same_bundle_spelt_another_way_keeps_the_recorded_variant(
    tmp_path, micro_bundle, micro_hf_checkpoint, monkeypatch
):
    pytest.importorskip("openvino")
    from converters.add_variants import add_variants

    bundle = tmp_path / "models" / "micro"
    shutil.copytree(micro_bundle, bundle)
    add_variants(bundle, micro_hf_checkpoint, backends="openvino", precisions="fp32",
                 n_calib=4, n_eval=8, log=lambda _: None)  # fmt: skip
    monkeypatch.setenv("EDGECLIP_PROBE", "0")  # auto would be onnx-fp32, the first backend
    _photos(tmp_path / "p", 2)
    db = tmp_path / "lib.db"
    with Index(db, bundle, backend="openvino") as ix:
        ix.update([tmp_path / "p"])
    monkeypatch.chdir(bundle.parent)
    for spelling in ("micro", f"{bundle}/", "./micro/", str(bundle)):
        with Index(db, spelling) as ix:
            assert ix.model.variant.id == "openvino-fp32", spelling
            assert len(ix.search("a red square", k=2)) == 2


def test_search_on_an_empty_index_says_how_to_fill_it(tmp_path, micro_bundle, capsys):
    (tmp_path / "empty").mkdir()
    db = str(tmp_path / "lib.db")
    assert cli(["index", str(tmp_path / "empty"), "--db", db, "--model", str(micro_bundle), "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["search", "a red square", "--db", db]) == 0
    out, err = capsys.readouterr()
    assert out == "" and f"holds no searchable photos yet; add some with `edgeclip index DIR --db {db}`" in err
