"""Can this student learn from this teacher? Same tokenizer, context length, image size, pixels.

Both models read the same token ids and pixels (the trainer tokenises each caption once, with
edgeclip's CLIP BPE, at the student's context length), so a teacher whose tokenizer or context
length differs would see ids it was not trained on, or captions truncated elsewhere. Pixels
are normalised with CLIP's mean and std, so a teacher whose ``preprocessor_config.json`` names
another normalisation would see other pixels than it was trained on. Those pairings are refused
with both values named.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from edgeclip.errors import InputError

STUDENT_TOKENIZER = "edgeclip CLIP BPE"


def _vocab_digest(vocab: dict[str, int]) -> str:
    canon = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


@lru_cache(maxsize=1)
def student_tokenizer() -> tuple[str, int]:
    """``(digest, size)`` of edgeclip's tokenizer as a token → id table."""
    from edgeclip.bpe_merges import hf_vocab_and_merges

    vocab, _ = hf_vocab_and_merges()
    return _vocab_digest(vocab), len(vocab)


def teacher_tokenizer(teacher_dir: str | Path) -> tuple[str, str, int] | None:
    """``(source file, digest, size)`` of the tokenizer saved beside a teacher, if any.

    Reads Hugging Face's ``vocab.json`` or, failing that, CLIP's ``bpe_simple_vocab_16e6.txt.gz``;
    ``None`` when the folder carries neither (then only the vocabulary size can be compared).
    """
    d = Path(teacher_dir)
    if (d / "vocab.json").is_file():
        try:
            vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(
                f"teacher tokenizer {d / 'vocab.json'} is not readable JSON: {e}"
            ) from None
        return "vocab.json", _vocab_digest(vocab), len(vocab)
    bpe = d / "bpe_simple_vocab_16e6.txt.gz"
    if bpe.is_file():
        from edgeclip.bpe_merges import hf_vocab_and_merges

        vocab, _ = hf_vocab_and_merges(bpe)
        return bpe.name, _vocab_digest(vocab), len(vocab)
    return None


def check_pairing(teacher_arch: dict, student_arch: dict, teacher_dir: str | Path | None) -> None:
    """Refuse a teacher and a student that cannot share inputs, naming both values."""
    t_ctx, s_ctx = teacher_arch["context_length"], student_arch["context_length"]
    if t_ctx != s_ctx:
        raise InputError(
            f"teacher context length {t_ctx} != student context length {s_ctx}: both read the same "
            f"token rows, so pick a student with context_length {t_ctx}"
        )
    t_vocab, s_vocab = teacher_arch["vocab_size"], student_arch["vocab_size"]
    if t_vocab != s_vocab:
        raise InputError(
            f"teacher vocabulary size {t_vocab} != student vocabulary size {s_vocab}: their "
            "tokenizers differ; pick a student with the teacher's tokenizer"
        )
    if teacher_dir is not None:
        found = teacher_tokenizer(teacher_dir)
        digest, size = student_tokenizer()
        if found is not None and found[1] != digest:
            src, t_digest, t_size = found
            raise InputError(
                f"teacher tokenizer ({src} sha256 {t_digest}, {t_size} tokens) differs from the "
                f"student's ({STUDENT_TOKENIZER} sha256 {digest}, {size} tokens): the student's ids "
                "would mean other words to the teacher"
            )
    t_img, s_img = teacher_arch["image_size"], student_arch["image_size"]
    if t_img != s_img:
        raise InputError(
            f"teacher image size {t_img} != student image size {s_img}: both see the same pixels, "
            f"so pick a student with image_size {t_img}"
        )
    if teacher_dir is not None:
        check_teacher_pixels(teacher_dir)


def check_teacher_pixels(teacher_dir: str | Path) -> None:
    """Refuse a teacher whose saved image normalisation is not CLIP's (the pixels both models get)."""
    from .evaluate import MEAN, STD

    path = Path(teacher_dir) / "preprocessor_config.json"
    if not path.is_file():
        return  # nothing saved: CLIP's is the only one known
    try:
        pre = json.loads(path.read_text(encoding="utf-8"))
        mean, std = pre.get("image_mean", MEAN), pre.get("image_std", STD)
        ok = all(abs(float(a) - b) < 1e-4 for a, b in zip(mean, MEAN)) and len(mean) == 3
        ok = ok and all(abs(float(a) - b) < 1e-4 for a, b in zip(std, STD)) and len(std) == 3
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"teacher preprocessor config {path} is not readable: {e}") from None
    if not ok:
        raise InputError(
            f"teacher {path} normalises pixels with image_mean {mean} and image_std {std}, not CLIP's "
            f"{list(MEAN)} and {list(STD)} that distillation feeds both models: the teacher would see "
            "other pixels than it was trained on; use a teacher trained with CLIP's normalisation"
        )
