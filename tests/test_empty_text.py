"""A text with no words once cleaned is refused wherever text goes in, and costs the others
nothing: ``encode_text`` (``BatchError`` keeping the good rows), ``edgeclip embed`` (a NaN row
and exit 1), ``Index.search`` (one clear line). Before, each silently embedded the empty prompt.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import edgeclip
from edgeclip.errors import BatchError, InputError
from edgeclip.index.library import Index

BLANKS = ["", "   ", "&nbsp;", "\u200b"]  # empty, whitespace, an HTML entity, a zero-width space


@pytest.fixture(scope="module")
def model(micro_bundle):
    return edgeclip.load(micro_bundle)


@pytest.mark.parametrize("blank", BLANKS)
def test_encode_text_refuses_a_blank_text_and_keeps_the_others(model, blank):
    texts = ["a red square", blank, "a blue circle"]
    with pytest.raises(BatchError) as info:
        model.encode_text(texts)
    err = info.value
    assert set(err.failures) == {1} and "no words once cleaned" in err.failures[1]
    assert repr(blank) in err.failures[1]
    assert np.isnan(err.results[1]).all()
    want = model.encode_text(["a red square", "a blue circle"])
    np.testing.assert_allclose(err.results[[0, 2]], want, atol=1e-6)


def test_encode_text_of_only_blanks_has_no_results(model):
    with pytest.raises(BatchError) as info:
        model.encode_text(BLANKS)
    assert info.value.results is None and sorted(info.value.failures) == [0, 1, 2, 3]


def test_cli_embed_gives_a_blank_text_a_nan_row_and_exits_1(micro_bundle, tmp_path):
    out = tmp_path / "e.npy"
    cmd = [sys.executable, "-m", "edgeclip", "embed", "a dog", "&nbsp;", "a cat", "-o", str(out),
           "--model", str(micro_bundle), "--text"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "&nbsp;: ERROR text '&nbsp;' has no words" in res.stderr and "its row is NaN" in res.stderr
    arr = np.load(out)
    assert arr.shape[0] == 3 and np.isnan(arr[1]).all()
    model = edgeclip.load(micro_bundle)
    np.testing.assert_allclose(arr[[0, 2]], model.encode_text(["a dog", "a cat"]), atol=1e-5)


def test_index_search_refuses_a_query_with_no_words(micro_bundle, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(photos / "red.png")
    with Index(tmp_path / "p.db", str(micro_bundle)) as ix:
        ix.update([photos])
        with pytest.raises(InputError, match="the search text '&nbsp;' has no words"):
            ix.search("&nbsp;")
        assert [os.path.basename(h.path) for h in ix.search("a red photo")] == ["red.png"]


def test_a_label_of_nothing_visible_is_refused_naming_it(model):
    with pytest.raises(InputError, match=r"labels\[1\]"):
        model.classify(np.zeros((40, 30, 3), np.uint8), ["a cat", "\u200b"])
