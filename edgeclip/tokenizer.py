"""CLIP's byte-level BPE tokenizer in plain Python + numpy (no torch, no transformers).

Bit-for-bit the ids of OpenAI's ``simple_tokenizer.py`` as vendored in open_clip: the text is
cleaned (``ftfy.fix_text``, ``html.unescape`` twice, strip, whitespace collapsed, lower-cased),
split with CLIP's regex, byte-encoded and merged with the first 49152-256-2 merges of
``bpe_simple_vocab_16e6.txt.gz``. Rows are ``<start_of_text>`` (49406) + ids + ``<end_of_text>``
(49407), zero-padded to the context length; a text that does not fit is truncated so that the
end token is still the last one (the text towers pool at the EOT = argmax of the ids).

Like the reference, the literal strings ``<start_of_text>`` and ``<end_of_text>`` inside a text
(any case) become the special ids.
"""

from __future__ import annotations

import array
import bisect
import heapq
import html
import threading
from collections.abc import Iterable
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Union

import numpy as np
import regex

from .bpe_merges import (
    _N_MERGES,
    VOCAB_SIZE,
    _bytes_to_unicode,
    _merges_of,
    bundled_pair_table_path,
    default_vocab_path,
    merge_pair_table,
)
from .errors import InputError

__all__ = [
    "CONTEXT_LENGTH",
    "EOT_ID",
    "SOT_ID",
    "VOCAB_SIZE",
    "Tokenizer",
    "default_vocab_path",
    "tokenize",
]

CONTEXT_LENGTH = 77
SOT_ID = 49406
EOT_ID = 49407
_SPECIAL = ("<start_of_text>", "<end_of_text>")
_CACHED_WORD = 64  # characters: longer words skip the BPE cache

# CLIP's pre-tokenizer: specials, English contractions, letter runs, single digits, other runs.
_PAT = regex.compile(
    "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# Text that ftfy and html.unescape provably leave alone: printable ASCII plus tab/newline/CR and
# no '&'. ftfy only rewrites non-ASCII, control characters, '&' entities, and line breaks (which
# the whitespace clean-up collapses anyway), so skipping it here cannot change an id; the tests
# check this on random ASCII strings. It halves the cost of typical prompts.
_NEEDS_FTFY = regex.compile(r"[^\x20-\x7e\t\n\r]|&")

TextInput = Union[str, Iterable[str]]


def clean_text(text: str) -> str:
    """CLIP's text normalisation: ftfy, html-unescape twice, collapse whitespace, lower-case."""
    if _NEEDS_FTFY.search(text) is not None:
        import ftfy  # a hard dependency, imported here so `import edgeclip` stays fast

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _is_bundled_vocab(path: Path) -> bool:
    """Whether ``path`` holds the same bytes as the merges file shipped with edgeclip: bundles
    carry their own copy, and parsing it costs 100 ms of every cold start the table avoids."""
    shipped = default_vocab_path()
    try:
        if path == shipped.resolve():
            return True
        if path.stat().st_size != shipped.stat().st_size:
            return False
        return path.read_bytes() == shipped.read_bytes()
    except OSError:
        return False  # _merges_of reports the unreadable file by name


class _Vocab:
    """The tables built from one merges file; shared by every Tokenizer that uses that file.

    Merge ranks live in C arrays searched by bisection (0.6 MB), not in a dict of strings: the
    dict and its strings cost 11 MB of resident memory and 40-60 ms to build at every start.
    """

    def __init__(self, path: Path):
        bundled = _is_bundled_vocab(path) and bundled_pair_table_path().is_file()
        table = (
            np.load(bundled_pair_table_path()) if bundled else merge_pair_table(_merges_of(path))
        )
        self.path = path
        self.pair_keys = array.array("I", table[0].astype(np.uint32).tobytes())
        self.pair_ranks = array.array("I", table[1].astype(np.uint32).tobytes())
        # Where each first id's keys start, so a lookup bisects a handful of keys, not 48,894.
        starts = np.searchsorted(table[0], np.arange(VOCAB_SIZE + 1, dtype=np.uint64) * VOCAB_SIZE)
        self.pair_starts = array.array("I", starts.astype(np.uint32).tobytes())
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # Turns latin-1-decoded UTF-8 bytes into OpenAI's byte characters in one str.translate.
        self.byte_table = dict(self.byte_encoder)
        # Ids follow CLIP's vocab order: the 256 byte characters, the same with '</w>', one token
        # per merge (id 512 + rank; every merged token is distinct), then the specials. So a
        # merge works on ids alone, and no token -> id table is kept.
        self.byte_ids = {c: i for i, c in enumerate(self.byte_encoder.values())}
        self.special = {s: 2 * 256 + _N_MERGES + k for k, s in enumerate(_SPECIAL)}
        # Bounded so a stream of unique words cannot grow memory without limit.
        self.bpe = lru_cache(maxsize=1 << 16)(self._bpe)
        self.encode_cached = lru_cache(maxsize=1 << 12)(self._encode)

    def _rank(self, first: int, key: int) -> int:
        """The merge rank of pair ``key`` (first id ``first``), or -1 when the pair never merges."""
        end = self.pair_starts[first + 1]
        i = bisect.bisect_left(self.pair_keys, key, self.pair_starts[first], end)
        return self.pair_ranks[i] if i < end and self.pair_keys[i] == key else -1

    def _bpe(self, token: str) -> tuple[int, ...]:
        """Ids of one pre-token (already byte-encoded): merge the lowest-ranked pair, every
        occurrence left to right, until none merges (OpenAI's algorithm, same ids).

        Done with a heap of (rank, position) over a linked list, so a 16,384-letter word takes
        40 ms rather than the 3 s of rescanning the word after each merge: one such text must
        not hold a server's model thread. Exact because a pair made by a merge always ranks
        after it (its token did not exist before), so pops come in the original's order."""
        if token in self.special:
            return (self.special[token],)
        byte_ids = self.byte_ids
        sym = [byte_ids[c] for c in token[:-1]] + [256 + byte_ids[token[-1]]]
        n = len(sym)
        nxt, prv, alive, heap = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n, []

        def push(i: int) -> None:  # the pair starting at position i, if it merges
            j = nxt[i]
            if j < n:
                r = self._rank(sym[i], sym[i] * VOCAB_SIZE + sym[j])
                if r >= 0:
                    heapq.heappush(heap, (r, i, sym[i], sym[j]))

        for i in range(n - 1):
            push(i)
        while heap:
            r, i, a, b = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or sym[i] != a or j >= n or sym[j] != b:
                continue  # a merge since it was pushed changed this pair
            sym[i], alive[j], nxt[i] = 2 * 256 + r, False, nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        return tuple(s for s, kept in zip(sym, alive) if kept)

    @cached_property
    def decoder(self) -> list[str]:
        """Id -> token string, built on the first ``decode`` (encoding never needs it)."""
        units = list(self.byte_encoder.values())
        return (
            units
            + [u + "</w>" for u in units]
            + [m.replace(" ", "") for m in _merges_of(self.path)]
            + list(_SPECIAL)
        )

    def _encode(self, text: str, limit: int | None = None) -> tuple[int, ...]:
        """Ids of ``text``; with ``limit``, words stop being encoded once that many ids exist
        (the context keeps no more), so a 16 MiB text costs what its first words do."""
        ids: list[int] = []
        table = self.byte_table
        for piece in _PAT.finditer(clean_text(text)):
            piece = piece.group()
            if piece in self.special:
                ids.append(self.special[piece])
            else:
                # Only short words are cached: a stream of long unique ones would fill memory.
                bpe = self.bpe if len(piece) <= _CACHED_WORD else self._bpe
                ids.extend(bpe(piece.encode("utf-8").decode("latin-1").translate(table)))
            if limit is not None and len(ids) >= limit:
                break
        return tuple(ids)


_VOCABS: dict[str, _Vocab] = {}
_VOCABS_LOCK = threading.Lock()


def _load_vocab(path: Path) -> _Vocab:
    key = str(path)
    vocab = _VOCABS.get(key)
    if vocab is None:
        with _VOCABS_LOCK:  # two threads tokenizing at start-up build the tables once
            vocab = _VOCABS.get(key)
            if vocab is None:
                vocab = _VOCABS[key] = _Vocab(path)
    return vocab


class Tokenizer:
    """CLIP BPE tokenizer: ``tok(texts)`` -> int64 ``(N, context_length)`` ids, zero-padded.

    ``vocab_path`` defaults to the merges file bundled with edgeclip; it is read lazily, once per
    process, on the first call. ``context_length`` (>= 2) is 77 for CLIP; student models may use
    less. Text longer than the context is truncated, never an error: the row keeps the first
    ``context_length - 1`` tokens (start token included) and ends with ``<end_of_text>``.
    """

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = CONTEXT_LENGTH):
        if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
            raise InputError(
                f"context_length must be an int, got {type(context_length).__name__} "
                f"{context_length!r}; CLIP uses 77"
            )
        if context_length < 2:
            raise InputError(
                f"context_length={context_length} leaves no room for <start_of_text> and "
                "<end_of_text>; use at least 2 (CLIP uses 77)"
            )
        path = default_vocab_path() if vocab_path is None else Path(vocab_path).expanduser()
        if not path.is_file():
            raise InputError(
                f"CLIP BPE vocab not found at {str(path)!r}; pass vocab_path=None to use the one "
                "bundled with edgeclip, or the path of a bpe_simple_vocab_16e6.txt.gz file"
            )
        self.vocab_path = path.resolve()
        self.context_length = int(context_length)
        self.sot_token_id = SOT_ID
        self.eot_token_id = EOT_ID
        self.vocab_size = VOCAB_SIZE
        self._vocab: _Vocab | None = None

    def __getstate__(self) -> dict:
        # The tables hold lru caches (unpicklable); a copy in a worker process reloads them lazily.
        return {**self.__dict__, "_vocab": None}

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_path={str(self.vocab_path)!r}, context_length={self.context_length})"
        )

    @property
    def _v(self) -> _Vocab:
        if self._vocab is None:
            self._vocab = _load_vocab(self.vocab_path)
        return self._vocab

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without the start/end tokens and without truncation."""
        return self._ids(text)

    def _ids(self, text: str, limit: int | None = None) -> list[int]:
        """``encode``; with ``limit``, ids past the first ``limit`` may be left out."""
        if not isinstance(text, str):
            raise InputError(
                f"text must be a str, got {type(text).__name__}; convert it with str() or "
                "decode bytes first"
            )
        v = self._v
        # Short texts (prompts, labels) repeat a lot; long ones would only churn the cache.
        return list(v.encode_cached(text) if len(text) <= 512 else v._encode(text, limit))

    def __call__(self, texts: TextInput) -> np.ndarray:
        """Tokenize one text or a sequence of texts into int64 ``(N, context_length)`` rows.

        Each row is ``[49406, ids..., 49407, 0, 0, ...]``; over-long texts are truncated with
        49407 kept as the last token. Any non-string item raises ``InputError`` naming it.
        """
        batch = _as_text_list(texts)
        ctx = self.context_length
        out = np.zeros((len(batch), ctx), dtype=np.int64)
        for row, text in zip(out, batch):
            ids = self._ids(text, ctx - 2)
            if len(ids) > ctx - 2:
                ids = ids[: ctx - 2]
            row[0] = SOT_ID
            row[1 : len(ids) + 1] = ids
            row[len(ids) + 1] = EOT_ID
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a row of ids: stops at ``<end_of_text>``, drops ``<start_of_text>``."""
        v = self._v
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise InputError(
                f"ids must be integers, got dtype {arr.dtype}; pass one row of token ids"
            )
        toks = arr.tolist()
        if EOT_ID in toks:
            toks = toks[: toks.index(EOT_ID)]
        bad = [t for t in toks if not 0 <= t < len(v.decoder)]
        if bad:
            raise InputError(
                f"token id {bad[0]} is outside the CLIP vocab [0, {len(v.decoder)}); "
                "pass ids produced by this tokenizer"
            )
        # '</w>' ends a word: split on it, map the characters back to bytes, join with spaces.
        words = "".join(v.decoder[t] for t in toks if t != SOT_ID).split("</w>")
        raw = b" ".join(bytes(v.byte_decoder[c] for c in w) for w in words)
        return raw.decode("utf-8", errors="replace").strip()


def _as_text_list(texts: TextInput) -> list[str]:
    """``texts`` as a list of str, or an InputError naming every bad item by index and type."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise InputError("texts is bytes; decode it to str first (e.g. texts.decode('utf-8'))")
    if isinstance(texts, np.ndarray):
        texts = texts.reshape(-1).tolist() if texts.ndim else [texts.item()]
    try:
        batch = list(texts)
    except TypeError:
        raise InputError(
            f"texts must be a str or a list of str, got {type(texts).__name__}"
        ) from None
    bad = [(i, t) for i, t in enumerate(batch) if not isinstance(t, str)]
    if bad:
        shown = ", ".join(f"index {i} is {type(t).__name__} {_short(t)}" for i, t in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise InputError(
            f"texts must all be str: {shown}{more}; convert them with str() or drop them"
        )
    return batch


def _short(x: object) -> str:
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


@lru_cache(maxsize=8)
def _default(context_length: int) -> Tokenizer:
    return Tokenizer(None, context_length)


def tokenize(texts: TextInput, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """``Tokenizer(context_length=...)(texts)`` with the bundled vocab, loaded once and cached.

    Returns int64 ``(N, context_length)``; over-long texts are truncated, keeping 49407 last.
    """
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
        return Tokenizer(None, context_length)(texts)  # raises the InputError
    return _default(int(context_length))(texts)
