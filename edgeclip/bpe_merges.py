"""CLIP's BPE merges file: where it ships, how it is read, and the tables derived from it.

The tokenizer (``edgeclip.tokenizer``) reads only the merge-pair table; Hugging Face's
``vocab.json`` / ``merges.txt`` are derived here for checkpoints written next to a student.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import InputError

VOCAB_SIZE = 49408
_N_MERGES = 49152 - 256 - 2  # exactly the slice OpenAI's simple_tokenizer uses


def default_vocab_path() -> Path:
    """The BPE merges file that ships inside the package."""
    return Path(__file__).resolve().parent / "data" / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable-character table (avoids whitespace/control chars)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def hf_vocab_and_merges(
    vocab_path: str | os.PathLike | None = None,
) -> tuple[dict[str, int], list[str]]:
    """The same BPE as Hugging Face's ``vocab.json`` (token → id) and ``merges.txt`` lines.

    Used to write tokenizer files next to checkpoints so transformers' CLIPTokenizer gives the
    same ids; HF names the special tokens ``<|startoftext|>`` / ``<|endoftext|>``.
    """
    with gzip.open(vocab_path or default_vocab_path(), "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    units = list(_bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _read_lines(path: Path, n: int) -> list[str]:
    """The first ``n`` lines of a gzip text file, decompressing only as far as they reach (the
    merges are the first fifth of CLIP's file; this halves the tokenizer's share of a cold start)."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header
    out, newlines = bytearray(), 0
    with open(path, "rb") as f:
        while newlines < n:
            chunk = f.read(1 << 16)
            if not chunk:
                out += inflate.flush()
                break
            piece = inflate.decompress(chunk)
            newlines += piece.count(b"\n")
            out += piece
    if not out:
        raise EOFError("empty file")
    return out.decode("utf-8").split("\n")[:n]


def merge_pair_table(merges: list[str]) -> np.ndarray:
    """(2, M) uint32: row 0 the merges' pair keys ``id(a) * VOCAB_SIZE + id(b)`` sorted, row 1
    each key's rank (the merge's line number). ``merges`` are the file's "a b" lines in order."""
    units = list(_bytes_to_unicode().values())
    token_id = {u: i for i, u in enumerate(units)}
    token_id.update({u + "</w>": 256 + i for i, u in enumerate(units)})
    token_id.update({m.replace(" ", ""): 512 + r for r, m in enumerate(merges)})
    keys = np.array(
        [token_id[a] * VOCAB_SIZE + token_id[b] for a, b in (m.split(" ") for m in merges)],
        dtype=np.uint32,  # 49407 * 49408 + 49407 < 2**32
    )
    order = np.argsort(keys, kind="stable")
    return np.stack([keys[order], order.astype(np.uint32)])


def bundled_pair_table_path() -> Path:
    """``merge_pair_table`` of the bundled merges file, shipped so loading parses no text."""
    return default_vocab_path().with_name("bpe_merge_pairs.npy")


def _merges_of(path: Path) -> list[str]:
    """The ``_N_MERGES`` "a b" merge lines of a CLIP BPE file, or an InputError naming it."""
    try:
        lines = _read_lines(path, _N_MERGES + 1)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise InputError(
            f"cannot read the CLIP BPE vocab {str(path)!r} ({e}); pass vocab_path=None to use "
            "the one bundled with edgeclip, or a bpe_simple_vocab_16e6.txt.gz file"
        ) from e
    merges = [" ".join(line.split()) for line in lines[1 : _N_MERGES + 1]]  # line 0: a header
    if len(merges) != _N_MERGES or any(m.count(" ") != 1 for m in merges):
        raise InputError(
            f"{str(path)!r} is not a CLIP BPE merges file: expected a header line and "
            f"{_N_MERGES} merges of two symbols each; use edgeclip's bundled vocab (vocab_path=None)"
        )
    return merges
