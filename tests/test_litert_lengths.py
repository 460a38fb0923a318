"""LiteRT text graphs with one signature per sequence length (converters/litert_variants.py,
edgeclip/backends/litert.py, edgeclip/towers.py), on a real micro bundle converted here.

A text file holds ``l8``, ``l16`` and ``l77`` over one copy of the weights; the runtime cuts a
batch's padding to the shortest length that holds its last end token. Padding after EOT never
reaches a causal tower that pools at EOT, so the bucketed embeddings are those of the 77-token
graph: checked over the tokenizer corpus, through the real interpreter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("ai_edge_litert")

from edgeclip.bundle import Bundle  # noqa: E402
from edgeclip.errors import InputError  # noqa: E402
from edgeclip.tokenizer import Tokenizer  # noqa: E402
from edgeclip.towers import open_towers, pad_to_length_bucket  # noqa: E402

LENGTHS = [8, 16, 77]
CORPUS = Path(__file__).parent / "data" / "tokenizer_corpus.json"


@pytest.fixture(scope="module")
def litert_bundle(micro_bundle, micro_hf_checkpoint, tmp_path_factory) -> Path:
    from converters.add_variants import add_variants

    bundle = tmp_path_factory.mktemp("litert-lengths") / "micro"
    shutil.copytree(micro_bundle, bundle)
    add_variants(bundle, micro_hf_checkpoint, backends="litert",
                 precisions="fp32,int8-weights,int8-static", n_calib=8, n_eval=8,
                 builder_options={"litert": {"batch_sizes": [1, 2], "text_lengths": [8, 16]}},
                 keep_failed=True, log=lambda _: None)  # fmt: skip
    return bundle


def _corpus_ids() -> np.ndarray:
    texts = json.loads(CORPUS.read_text())["texts"]
    return Tokenizer()(texts)


def _variant(bundle: Path, vid: str):
    return next(v for v in Bundle.open(bundle, verify=False).variants if v.id == vid)


def test_each_text_file_has_a_signature_per_length_sharing_its_weights(litert_bundle):
    from converters.litert_variants import signature_lengths

    manifest = json.loads((litert_bundle / "manifest.json").read_text())
    for v in (v for v in manifest["variants"] if v["backend"] == "litert"):
        assert v["text"]["sequence_lengths"] == LENGTHS, v["id"]
        assert "sequence_lengths" not in v["image"]
        for batch in (1, 2):
            text = litert_bundle / v["text"]["file"].format(batch=batch)
            assert signature_lengths(text) == LENGTHS, (v["id"], batch)
    # three signatures, one copy of the weights: the text file is not three times the image's share
    fp32 = _variant(litert_bundle, "litert-fp32")
    size = (litert_bundle / fp32.text.file.format(batch=1)).stat().st_size
    embedding = 49408 * 32 * 4  # the micro token table alone, fp32
    assert embedding < size < 2 * embedding


@pytest.mark.parametrize("vid", ["litert-fp32", "litert-int8-weights"])
def test_bucketed_text_matches_the_77_token_graph_over_the_tokenizer_corpus(litert_bundle, vid):
    variant = _variant(litert_bundle, vid)
    _, text = open_towers(litert_bundle, variant, threads=1)
    ids = _corpus_ids()
    got = text(ids, 2)  # through TowerRunner: trimmed, padded to a bucket, chunked to batch 2
    session = text.session(1)
    full = np.concatenate([session.run({"ids": ids[i : i + 1]}) for i in range(len(ids))])
    cos = np.sum(got * full, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(full, axis=1)
    assert cos.min() >= 1 - 1e-5, (vid, float(cos.min()))
    # the corpus has short prompts: they really ran a short signature
    assert pad_to_length_bucket(ids[:1], variant.text.sequence_lengths).shape[1] < 77


def test_buckets_pad_to_the_shortest_length_holding_the_last_end_token():
    tok = Tokenizer()
    short, mid = tok(["a cat"]), tok(["a photo of " + "a very small cat " * 2])
    assert pad_to_length_bucket(short, (8, 16, 77)).shape == (1, 8)
    assert pad_to_length_bucket(np.concatenate([short, mid]), (8, 16, 77)).shape == (2, 16)
    padded = pad_to_length_bucket(short, (8, 16, 77))
    np.testing.assert_array_equal(padded, short[:, :8])  # zeros after EOT, ids unchanged
    assert pad_to_length_bucket(tok(["word " * 80]), (8, 16, 77)).shape == (1, 77)


def test_a_width_the_graph_was_not_exported_at_is_named(litert_bundle):
    _, text = open_towers(litert_bundle, _variant(litert_bundle, "litert-fp32"), threads=1)
    session = text.session(1)
    assert session.sequence_lengths == tuple(LENGTHS)
    with pytest.raises(InputError) as err:
        session.run({"ids": np.zeros((1, 12), dtype=np.int64)})
    assert "[8, 16, 77]" in str(err.value) and "TowerRunner" in str(err.value)


def test_the_runtime_serves_the_bucketed_variants_after_its_on_device_check(litert_bundle):
    import edgeclip

    gated = [v for v in Bundle.open(litert_bundle, verify=False).variants
             if v.backend == "litert" and v.passed]  # fmt: skip
    assert gated, "no LiteRT variant passed its gate on random weights"
    for v in gated:
        model = edgeclip.load(litert_bundle, backend="litert", precision=v.precision)
        vec = model.encode_text(["a photo of a cat", "a dog"])
        assert vec.shape[0] == 2 and np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)
