"""edgeclip's CLIP BPE tokenizer against OpenAI's ids (golden file) and transformers (live)."""

from __future__ import annotations

import gzip
import html
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import ftfy
import numpy as np
import pytest

from edgeclip.errors import InputError
from edgeclip.tokenizer import (
    EOT_ID,
    SOT_ID,
    Tokenizer,
    clean_text,
    default_vocab_path,
    tokenize,
)

DATA = Path(__file__).parent / "data"
TEXTS: list[str] = json.loads((DATA / "tokenizer_corpus.json").read_text("utf-8"))["texts"]
GOLDEN = json.loads((DATA / "tokenizer_golden.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def reference_clean(text: str) -> str:
    """open_clip's basic_clean + whitespace_clean + lower, spelled out as the reference does."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def unpad(row: np.ndarray) -> list[int]:
    ids = row.tolist()
    return ids[: ids.index(EOT_ID) + 1]


# --- parity with OpenAI's simple_tokenizer (golden ids written by benchmarks/tokenizer_parity.py)


def test_corpus_is_broad():
    assert len(TEXTS) >= 200
    assert len(GOLDEN["ids"]) == len(GOLDEN["n_tokens"]) == len(TEXTS)
    assert "" in TEXTS and "&lt;b&gt;" in TEXTS and any(n > 75 for n in GOLDEN["n_tokens"])


def test_rows_match_openai_golden_ids(tok):
    rows = tok(TEXTS)
    bad = [(t, unpad(r), g) for t, r, g in zip(TEXTS, rows, GOLDEN["ids"]) if unpad(r) != g]
    assert not bad, f"{len(bad)} of {len(TEXTS)} differ from OpenAI's ids, e.g. {bad[:3]}"


def test_encode_lengths_match_openai_before_truncation(tok):
    got = [len(tok.encode(t)) for t in TEXTS]
    bad = [(t, n, g) for t, n, g in zip(TEXTS, got, GOLDEN["n_tokens"]) if n != g]
    assert not bad, f"{len(bad)} encode() lengths differ, e.g. {bad[:3]}"


def test_cleaning_matches_reference_on_corpus():
    assert [clean_text(t) for t in TEXTS] == [reference_clean(t) for t in TEXTS]


def test_ascii_fast_path_equals_ftfy_path():
    # clean_text skips ftfy for printable ASCII without '&'; it must never change the result.
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"] + ["\t", "\n", "\r", "\r\n"]
    alphabet += ["'s", "'LL", "<b>", "#39;", "lt;", "  "]
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert clean_text(s) == reference_clean(s), repr(s)


# --- live parity with transformers' CLIPTokenizer built from the same merges file


def _bytes_to_unicode() -> dict[int, str]:
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    lines = gzip.open(default_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]  # HF's names for 49406 / 49407
    d = tmp_path_factory.mktemp("hf_clip_tokenizer")
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), "utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    hf = transformers.CLIPTokenizer.from_pretrained(str(d))
    assert (hf.bos_token_id, hf.eos_token_id, len(hf)) == (SOT_ID, EOT_ID, 49408)
    return hf


def hf_incomparable(text: str) -> str | None:
    """Why HF's CLIPTokenizer cannot give OpenAI's ids for ``text``, or None when it should.

    HF (transformers 5: a `tokenizers` pipeline; no slow Python tokenizer any more) runs NFC +
    whitespace + lower-case, not ftfy or html.unescape: we feed it text already passed through
    ftfy and html.unescape twice, which leaves these real differences:
    - the special tokens are spelled ``<|startoftext|>`` there and ``<start_of_text>`` in
      open_clip, so a text containing either spelling literally is split differently;
    - its Lowercase maps every capital sigma to σ, Python's str.lower (OpenAI) maps a
      word-final Σ to ς.
    HF also pads with <end_of_text> where CLIP pads with 0, which the row comparison undoes.
    """
    low = reference_clean(text)
    if any(
        s in low for s in ("<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>")
    ):
        return "special-token literal"
    if "ς" in low:
        return "final sigma"
    return None


def test_encode_matches_transformers(tok, hf_tokenizer):
    comparable = [t for t in TEXTS if hf_incomparable(t) is None]
    assert len(comparable) >= 330
    pre = [html.unescape(html.unescape(ftfy.fix_text(t))) for t in comparable]
    theirs = hf_tokenizer(pre, add_special_tokens=False)["input_ids"]
    bad = [(t, tok.encode(t), h) for t, h in zip(comparable, theirs) if tok.encode(t) != h]
    assert not bad, f"{len(bad)} of {len(comparable)} differ from transformers, e.g. {bad[:3]}"
    # Where ftfy and unescaping change nothing, HF on the raw text must agree too.
    raw = [t for t, p in zip(comparable, pre) if p == t]
    assert len(raw) >= 250
    theirs_raw = hf_tokenizer(raw, add_special_tokens=False)["input_ids"]
    assert [tok.encode(t) for t in raw] == theirs_raw


def test_rows_match_transformers_up_to_padding(tok, hf_tokenizer):
    comparable = [t for t in TEXTS if hf_incomparable(t) is None]
    pre = [html.unescape(html.unescape(ftfy.fix_text(t))) for t in comparable]
    enc = hf_tokenizer(pre, padding="max_length", truncation=True, max_length=77)
    theirs = np.array(enc["input_ids"], dtype=np.int64)
    for row in theirs:  # HF pads with EOT; CLIP pads with 0 after the first EOT
        row[row.tolist().index(EOT_ID) + 1 :] = 0
    np.testing.assert_array_equal(tok(comparable), theirs)


def _long_texts() -> list[str]:
    """Long unbroken words (where merging rescans cost quadratic time before) and a 1 MiB text."""
    rng = random.Random(11)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n)) for n in (300, 2000, 16384)]
    words += ["ab" * 3000, "a" * 5001, "".join(rng.choice("éàüß日本語abc") for _ in range(3000))]
    return words + [" ".join(words[:2]) * 400]


def test_long_words_and_texts_match_transformers(tok, hf_tokenizer):
    texts = _long_texts()
    theirs = hf_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert [tok.encode(t) for t in texts[:-1]] == theirs[:-1]  # whole words, no truncation
    enc = hf_tokenizer(texts, padding="max_length", truncation=True, max_length=77)
    rows = np.array(enc["input_ids"], dtype=np.int64)
    for row in rows:
        row[row.tolist().index(EOT_ID) + 1 :] = 0
    np.testing.assert_array_equal(tok(texts), rows)  # rows stop encoding at the context


# --- shapes, padding, truncation, batches, errors


def test_shape_dtype_and_zero_padding(tok):
    out = tok(["a photo of a dog.", "", "😀 café"])
    assert out.shape == (3, 77) and out.dtype == np.int64
    assert out[0, :8].tolist() == [SOT_ID, 320, 1125, 539, 320, 1929, 269, EOT_ID]
    assert out[1, :2].tolist() == [SOT_ID, EOT_ID] and not out[1, 2:].any()
    for row in out:
        end = row.tolist().index(EOT_ID)
        assert row[0] == SOT_ID and not row[end + 1 :].any()


def test_single_string_gives_one_row(tok):
    out = tok("a diagram")
    assert out.shape == (1, 77)
    np.testing.assert_array_equal(out, tokenize("a diagram"))
    np.testing.assert_array_equal(out, tokenize(["a diagram"]))


def test_long_text_is_truncated_with_eot_last(tok):
    text = "a very long caption about " + "dogs and cats " * 100
    ids = tok.encode(text)
    assert len(ids) > 200
    row = tok(text)[0]
    assert row[-1] == EOT_ID and row.all()
    assert row.tolist() == [SOT_ID] + ids[:75] + [EOT_ID]


def test_truncation_boundary(tok):
    fits, over = tok(["x " * 75, "x " * 76])  # 75 tokens fit exactly between SOT and EOT
    assert fits.tolist() == [SOT_ID] + tok.encode("x " * 75) + [EOT_ID]
    assert over.tolist() == fits.tolist()
    assert len(tok.encode("x " * 76)) == 76


def test_mixed_batch_equals_one_by_one(tok):
    batch = ["", "A Photo", "&lt;b&gt;hi&lt;/b&gt;", "日本語 😀", "word " * 300, "  \n\t ", "it's"]
    together = tok(batch)
    for i, text in enumerate(batch):
        np.testing.assert_array_equal(together[i], tok(text)[0])
    assert tok(np.array(batch)).tolist() == together.tolist()
    assert tok(tuple(batch)).shape == (len(batch), 77)
    assert tok([]).shape == (0, 77)


def test_non_string_items_are_named(tok):
    with pytest.raises(InputError) as e:
        tok(["fine", 3, "also fine", None])
    msg = str(e.value)
    assert "index 1 is int" in msg and "index 3 is NoneType" in msg and "str()" in msg
    with pytest.raises(InputError, match="bytes"):
        tok(b"a photo")
    with pytest.raises(InputError, match="int"):
        tok(5)
    with pytest.raises(InputError, match="NoneType"):
        tok.encode(None)


def test_short_context_length():
    t16 = Tokenizer(context_length=16)
    texts = ["a photo of a dog.", "one two three four five six seven eight nine ten " * 3]
    out = t16(texts)
    assert out.shape == (2, 16)
    full = Tokenizer()(texts)
    np.testing.assert_array_equal(out[0], full[0, :16])
    assert out[1, -1] == EOT_ID and out[1, :15].tolist() == full[1, :15].tolist()
    np.testing.assert_array_equal(tokenize(texts, context_length=16), out)
    assert Tokenizer(context_length=2)("anything").tolist() == [[SOT_ID, EOT_ID]]
    for bad in (1, 0, -5, 7.5, "77", True):
        with pytest.raises(InputError, match="context_length"):
            Tokenizer(context_length=bad)


def test_special_token_literals_follow_the_reference(tok):
    # OpenAI/open_clip map the literal special strings to their ids; so do we.
    assert tok.encode("before <END_OF_TEXT> after") == [1348, EOT_ID, 953]


def test_decode(tok):
    assert tok.decode(tok("A Photo of a DOG")[0]) == "a photo of a dog"
    assert tok.decode(tok.encode("café 日本語 😀 naïve")) == "café 日本語 😀 naïve"
    assert tok.decode(np.array([SOT_ID, 1929, EOT_ID, 0, 0])) == "dog"
    with pytest.raises(InputError, match="outside"):
        tok.decode([49408])


def test_vocab_path_errors_and_sharing(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Tokenizer(vocab_path=tmp_path / "missing.txt.gz")
    junk = tmp_path / "junk.txt.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="junk.txt.gz"):
        Tokenizer(vocab_path=junk).encode("x")  # read lazily, on first use
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as f:
        f.write("#version\nh e\n")
    with pytest.raises(InputError, match="merges"):
        Tokenizer(vocab_path=short)("x")
    a, b = Tokenizer(), Tokenizer(vocab_path=str(default_vocab_path()), context_length=32)
    assert a.encode("shared") == b.encode("shared") and a._v is b._v  # tables loaded once
    c = pickle.loads(pickle.dumps(b))  # e.g. sent to a DataLoader worker
    assert c.context_length == 32 and c("shared").tolist() == b("shared").tolist()


def test_import_pulls_no_heavy_dependency():
    code = (
        "import sys, edgeclip.tokenizer as t; t.tokenize('x');"
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_shipped_pair_table_is_the_bundled_merges_file(tmp_path):
    from edgeclip.bpe_merges import _merges_of, bundled_pair_table_path, merge_pair_table
    from edgeclip.tokenizer import _is_bundled_vocab

    shipped = np.load(bundled_pair_table_path())
    assert np.array_equal(shipped, merge_pair_table(_merges_of(default_vocab_path())))
    # A bundle's byte-identical copy uses the shipped table (no text parsed at load). The same
    # merges gzipped again (other bytes) take the derived path: same ids, decodes.
    copy = tmp_path / "bpe_copy.txt.gz"
    copy.write_bytes(default_vocab_path().read_bytes())
    assert _is_bundled_vocab(copy)
    regzipped = tmp_path / "bpe_regzipped.txt.gz"
    regzipped.write_bytes(gzip.compress(gzip.decompress(copy.read_bytes()), compresslevel=1))
    assert not _is_bundled_vocab(regzipped)
    assert not _is_bundled_vocab(tmp_path / "missing.txt.gz")
    texts = ["a photo of a hexagonal internationalization", "café 日本語 😀", "tiny-clip's 8m!"]
    derived, bundled = Tokenizer(vocab_path=regzipped), Tokenizer()
    assert derived._v is not bundled._v
    assert Tokenizer(vocab_path=copy)(texts).tolist() == bundled(texts).tolist()
    assert derived(texts).tolist() == bundled(texts).tolist()
    assert derived.decode(derived(texts)[1]) == "café 日本語 😀"
