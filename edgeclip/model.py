"""``EdgeClip``: image/text embeddings, similarity and zero-shot classification. Knows no backend."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from os import PathLike
from pathlib import Path
from string import Formatter
from typing import Any, Union

import numpy as np

from .backends.base import Session
from .bundle import Bundle, Variant
from .errors import BatchError, InputError
from .text import is_blank
from .towers import TowerRunner

ImageLike = Any  # path, bytes, file object, PIL image or HWC array (see edgeclip.images)
Labels = Sequence[str]
Templates = Union[str, Sequence[str], None]

_LABEL_CACHE_SIZE = 32
_EMPTY_TEXT = ("text {!r} has no words once cleaned (the tokenizer unescapes HTML and drops "
               "whitespace), so its vector would be the empty prompt's; give text with words.")


def _wordless(ids: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """Which texts hold no words: start and end tokens only once cleaned ("&nbsp;"), or
    nothing visible (a zero-width space, which the BPE still turns into tokens)."""
    return ((ids != 0).sum(axis=1) <= 2) | np.array([is_blank(t) for t in texts])


@lru_cache(maxsize=1)
def template_sets() -> dict[str, list[str]]:
    """The shipped prompt-template sets (``none``, ``photo``, ``imagenet7``, ``imagenet80``)."""
    # A plain path, like the tokenizer's vocab: importlib.resources cost 6 ms of every start.
    text = (Path(__file__).resolve().parent / "data" / "templates.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _image_items(images: ImageLike | Sequence[ImageLike]) -> tuple[list[ImageLike], bool]:
    """``(the images as a list, whether one image was given)``."""
    if isinstance(images, np.ndarray):
        return (list(images), False) if images.ndim == 4 else ([images], True)
    if isinstance(images, (list, tuple)):
        return list(images), False
    one = (str, bytes, bytearray, memoryview, PathLike)
    if isinstance(images, one) or hasattr(images, "read") or not hasattr(images, "__iter__"):
        return [images], True  # a file object iterates its lines: it is one image
    return list(images), False  # a generator, an iterator, a set or a pandas Series of images


def _check_labels(labels: Labels) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise InputError(
            f"labels must be a list of strings, got {type(labels).__name__}; e.g. ['cat', 'dog']."
        )
    labels = list(labels)
    if len(labels) < 1:
        raise InputError("labels is empty; give at least one class name, e.g. ['cat', 'dog'].")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise InputError(f"label {i} is a {type(label).__name__} ({label!r}), not a string.")
        if not any(ch.isprintable() and not ch.isspace() for ch in label):
            raise InputError(
                f"labels[{i}] ({label!r}) is empty or only whitespace / invisible characters; "
                "every label needs a name.",
                param=f"labels[{i}]",
            )
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise InputError(
                f"label {label!r} appears twice (positions {seen[label]} and {i}); labels must be unique."
            )
        seen[label] = i
    return labels


def _resolve_templates(templates: Templates) -> tuple[str, ...]:
    if templates is None:
        return ("{}",)
    if isinstance(templates, str):
        sets = template_sets()
        if templates in sets:
            return tuple(sets[templates])
        if _one_slot(templates):
            return (templates,)
        raise InputError(
            f"templates {templates!r} is neither a template set ({', '.join(sets)}) nor a template "
            "with exactly one '{}' (write a literal brace as '{{' or '}}')."
        )
    out = tuple(templates)
    bad = [t for t in out if not isinstance(t, str) or not _one_slot(t)]
    if not out or bad:
        raise InputError(
            "every template must be a string with exactly one '{}' (a literal brace is '{{' or "
            f"'}}}}'); bad: {bad or 'empty list'}."
        )
    return out


def _one_slot(template: str) -> bool:
    """Whether ``template.format(label)`` puts the label in exactly once and cannot raise."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in Formatter().parse(template)
                  if name is not None]  # fmt: skip
    except ValueError:  # a lone '{' or '}'
        return False
    return fields == [("", "", None)]


class EdgeClip:
    """A loaded CLIP: one bundle variant on one backend. Create with ``edgeclip.load``."""

    def __init__(
        self,
        bundle: Bundle,
        variant: Variant,
        opener: Callable[[str], Session],
        *,
        batch_size: int = 32,
        backend_info: str = "",
        selection_reason: str = "",
        verification: Any = None,
    ):
        from .preprocess import Preprocessor
        from .tokenizer import Tokenizer

        self.bundle = bundle
        self.variant = variant
        self.batch_size = int(batch_size)
        self.backend_info = backend_info
        #: why ``edgeclip.load`` picked this variant (see ``edgeclip.autoselect``)
        self.selection_reason = selection_reason
        #: the on-device check of this variant (``edgeclip.verify.Status``), None if skipped
        self.verification = verification
        self.logit_scale = bundle.logit_scale
        self.preprocessor = Preprocessor(bundle.preprocess or None)
        tok = bundle.tokenizer
        vocab = bundle.path_of(tok["file"]) if tok.get("file") else None
        self.tokenizer = Tokenizer(vocab, context_length=int(tok.get("context_length", 77)))
        self._image = TowerRunner(variant.image, opener, is_text=False)
        self._text = TowerRunner(variant.text, opener, is_text=True)
        self._label_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    # -- embeddings ---------------------------------------------------------------------------
    @property
    def batch_invariant(self) -> bool:
        """Whether this variant's embedding of an input is independent of its batch neighbours.

        Dynamic INT8 graphs compute activation scales over the whole batch tensor, so they are
        not; ``invariant=True`` then runs them one input per call (see ``_chunk``).
        """
        if self.verification is not None:
            return bool(self.verification.batch_invariant)
        return self.variant.batch_invariant

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What makes stored vectors comparable: bundle digest, variant and preprocessing."""
        return {
            "bundle": self.bundle.digest,
            "variant": self.variant.id,
            "preprocess": self.bundle.preprocess,
            "embed_dim": self.embed_dim,
        }

    def _chunk(self, batch_size: int | None, invariant: bool) -> int:
        if invariant and not self.batch_invariant:
            return 1
        if batch_size is None:
            return self.batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, or None for the model's "
                             f"{self.batch_size}; got {batch_size!r}.")  # fmt: skip
        return int(batch_size)

    def encode_image(
        self,
        images: ImageLike | Sequence[ImageLike],
        batch_size: int | None = None,
        *,
        invariant: bool = False,
    ) -> np.ndarray:
        """L2-normalised image embeddings, float32 (N, D); one row per input, in order.

        Accepts paths, bytes, file objects, PIL images and HWC uint8 arrays (a 4-D array is a
        batch). If some inputs cannot be read, raises ``BatchError`` whose ``.results`` holds
        every good row (failed rows are NaN) and whose ``.failures`` says why each failed.
        ``invariant=True`` guarantees each row equals encoding that input alone (use it for
        vectors you store); it costs speed only on batch-dependent variants.
        """
        items, _ = _image_items(images)
        if not items:
            raise InputError("encode_image got no images.")
        from .preprocess import WINDOW  # loaded already, with the preprocessor

        chunk = self._chunk(batch_size, invariant)
        out, failures = None, {}
        # Window by window, so memory holds two windows of pixels, not the whole list's.
        for start, (pixels, good, failed) in self.preprocessor.windows(items, max(chunk, WINDOW)):
            failures.update({start + i: why for i, why in failed.items()})
            if good:
                emb = _normalise(self._image(pixels, chunk))
                if out is None:
                    out = np.full((len(items), emb.shape[1]), np.nan, dtype=np.float32)
                out[[start + i for i in good]] = emb
        if failures:
            raise BatchError("images", failures, out, len(items))
        return out

    def encode_pixels(
        self, pixels: np.ndarray, batch_size: int | None = None, *, invariant: bool = False
    ) -> np.ndarray:
        """L2-normalised embeddings of already preprocessed float32 (N, 3, S, S) pixels
        (``self.preprocessor``'s output), for pipelines that decode on their own threads."""
        return _normalise(self._image(pixels, self._chunk(batch_size, invariant)))

    def encode_text(
        self,
        texts: str | Sequence[str],
        batch_size: int | None = None,
        *,
        invariant: bool = False,
    ) -> np.ndarray:
        """L2-normalised text embeddings, float32 (N, D). Text past the context is truncated.

        A text with no words once cleaned (empty, blank, ``"&nbsp;"``) raises ``BatchError``
        whose ``.results`` holds the other rows (its own is NaN), as a bad image does.

        ``invariant=True``: as in ``encode_image``, rows independent of their batch neighbours.
        """
        if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
            raise InputError(f"encode_text takes a str or a list of str, got {type(texts).__name__}.")
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise InputError("encode_text got no texts.")
        ids = self.tokenizer(items)
        chunk = self._chunk(batch_size, invariant)
        empty = _wordless(ids, items)
        if not empty.any():
            return _normalise(self._text(ids, chunk))
        # The empty prompt's vector matches nothing in particular: a silent wrong answer.
        failures = {int(i): _EMPTY_TEXT.format(items[i]) for i in np.flatnonzero(empty)}
        out = None
        if not empty.all():
            emb = _normalise(self._text(ids[~empty], chunk))
            out = np.full((len(items), emb.shape[1]), np.nan, dtype=np.float32)
            out[~empty] = emb
        raise BatchError("texts", failures, out, len(items))

    # -- zero-shot ------------------------------------------------------------------------------
    def label_embeddings(self, labels: Labels, templates: Templates = None) -> np.ndarray:
        """One normalised embedding per label: each template filled in, embedded, averaged.

        Cached per (labels, templates), so classifying many images against one label set
        embeds the labels once.
        """
        labels = _check_labels(labels)
        self._refuse_wordless(labels)
        temps = _resolve_templates(templates)
        key = (tuple(labels), temps)
        if key in self._label_cache:
            self._label_cache.move_to_end(key)
            return self._label_cache[key]
        prompts = [t.format(label) for label in labels for t in temps]
        emb = self.encode_text(prompts).reshape(len(labels), len(temps), -1)
        # Ensembling as in CLIP's ImageNet notebook: mean of normalised prompt embeddings, renormalised.
        result = _normalise(emb.mean(axis=1))
        self._label_cache[key] = result
        if len(self._label_cache) > _LABEL_CACHE_SIZE:
            self._label_cache.popitem(last=False)
        return result

    def _refuse_wordless(self, labels: list[str]) -> None:
        """A label the tokenizer reduces to nothing ("&nbsp;", a zero-width space) would rank
        as the empty prompt: a silent wrong answer."""
        ids = self.tokenizer(labels)
        for i in np.flatnonzero(_wordless(ids, labels)):
            raise InputError(
                f"labels[{i}] ({labels[i]!r}) has no text once cleaned (the tokenizer unescapes "
                "HTML and drops whitespace); give a label with words in it.",
                param=f"labels[{i}]",
            )

    def classify(
        self,
        images: ImageLike | Sequence[ImageLike],
        labels: Labels,
        top_k: int = 5,
        templates: Templates = None,
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Zero-shot classification: ``[(label, probability), ...]`` best first, ``top_k`` long.

        One image in → one list; a list of images in → a list of lists. Probabilities are the
        softmax of the model's logit scale × cosine. ``templates``: None, a set name
        ('photo', 'imagenet7', 'imagenet80') or your own list of strings with '{}'.
        Unreadable images raise ``BatchError``; ``.results`` keeps the others (None for failed).
        """
        items, single = _image_items(images)  # a generator is read once, here
        label_list = _check_labels(labels)
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}.")
        text_emb = self.label_embeddings(label_list, templates)
        try:
            img_emb, error = self.encode_image(items), None
        except BatchError as exc:
            img_emb, error = exc.results, exc
        results: list[list[tuple[str, float]] | None] = []
        n = len(items)
        for i in range(n):
            if img_emb is None or np.isnan(img_emb[i, 0]):
                results.append(None)
                continue
            logits = self.logit_scale * (img_emb[i] @ text_emb.T)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            order = np.argsort(-probs)[:top_k]
            results.append([(label_list[j], float(probs[j])) for j in order])
        if error is not None:
            raise BatchError("images", error.failures, results[0] if single else results, n)
        return results[0] if single else results

    def similarity(
        self, images: ImageLike | Sequence[ImageLike], texts: str | Sequence[str]
    ) -> np.ndarray:
        """Cosine similarity matrix (N_images, N_texts)."""
        return self.encode_image(images) @ self.encode_text(texts).T

    # -- info -------------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int | None:
        return self.bundle.embed_dim

    def warm(self, image: bool = True, text: bool = True) -> EdgeClip:
        """Open the towers' graphs now (``load`` is lazy so a CLI that only embeds text skips the image tower)."""
        if image:
            self._image.warm()
        if text:
            self._text.warm()
        return self

    @property
    def towers_open(self) -> tuple[str, ...]:
        """The towers whose graphs are open: ``("text",)`` after text alone was encoded."""
        return tuple(name for name, tower in (("image", self._image), ("text", self._text))
                     if tower.is_open)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"EdgeClip({self.bundle.name!r}, variant={self.variant.id!r}, "
            f"backend={self.backend_info or self.variant.backend!r})"
        )
