"""``EdgeClip``: image/text embeddings, similarity and zero-shot classification. Knows no backend."""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

import numpy as np

from .backends.base import Session
from .bundle import Bundle, Variant
from .errors import BatchError, InputError
from .prompts import Labels, Templates, check_labels, resolve_templates
from .text import is_blank
from .towers import TowerRunner

ImageLike = Any  # path, bytes, file object, PIL image or HWC array (see edgeclip.images)

_LABEL_CACHE_SIZE = 32
_EMPTY_TEXT = ("text {!r} has no words once cleaned (the tokenizer unescapes HTML and drops "
               "whitespace), so its vector would be the empty prompt's; give text with words.")


def _wordless(ids: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """Which texts hold no words: start and end tokens only once cleaned ("&nbsp;"), or
    nothing visible (a zero-width space, which the BPE still turns into tokens)."""
    return ((ids != 0).sum(axis=1) <= 2) | np.array([is_blank(t) for t in texts])


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


def _raise_batch_error(what: str, failures: dict[int, str], results: Any, total: int,
                       single: bool) -> None:  # fmt: skip
    """A batch keeps its good rows in a ``BatchError``; one input, given alone, has none to keep:
    its reason is an ``InputError``."""
    if single:
        raise InputError(failures[0])
    raise BatchError(what, failures, results, total)


def _check_max_pixels(value: Any) -> int | None:
    if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0):
        return None if value is None else int(value)
    raise InputError(f"max_pixels must be a positive whole number of pixels or None (no limit), "
                     f"got {value!r}.")  # fmt: skip


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
        max_pixels: int | None | str = "default",
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
        if max_pixels != "default":
            self.preprocessor.max_pixels = _check_max_pixels(max_pixels)
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
        items, single = _image_items(images)
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
            _raise_batch_error("images", failures, out, len(items), single)
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
        chunk = self._chunk(batch_size, invariant)
        ids, failures = self._tokens(items)
        if not failures:
            return _normalise(self._text(ids, chunk))
        bad = np.isin(np.arange(len(items)), list(failures))
        out = None
        if not bad.all():
            emb = _normalise(self._text(ids[~bad], chunk))
            out = np.full((len(items), emb.shape[1]), np.nan, dtype=np.float32)
            out[~bad] = emb
        _raise_batch_error("texts", failures, out, len(items), isinstance(texts, str))

    def _tokens(self, items: list[Any]) -> tuple[np.ndarray, dict[int, str]]:
        """Token ids of ``items``, and why each one that cannot be embedded fails: not a str,
        or no words once cleaned (the empty prompt's vector matches nothing in particular, a
        silent wrong answer)."""
        failures = {i: f"text {i} is {type(t).__name__} {str(t)[:40]!r}, not str; pass strings "
                       "(decode bytes first)" for i, t in enumerate(items) if not isinstance(t, str)}  # fmt: skip
        texts = [t if isinstance(t, str) else "" for t in items]
        ids = self.tokenizer(texts)
        for i in np.flatnonzero(_wordless(ids, texts)):
            failures.setdefault(int(i), _EMPTY_TEXT.format(texts[i]))
        return ids, failures

    # -- zero-shot ------------------------------------------------------------------------------
    def label_embeddings(self, labels: Labels, templates: Templates = None) -> np.ndarray:
        """One normalised embedding per label: each template filled in, embedded, averaged.

        Cached per (labels, templates), so classifying many images against one label set
        embeds the labels once.
        """
        labels = check_labels(labels)
        self._refuse_wordless(labels)
        temps = resolve_templates(templates)
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
        Unreadable images raise ``BatchError``; ``.results`` keeps the others (None for failed);
        one image given alone that cannot be read raises ``InputError``.
        """
        items, single = _image_items(images)  # a generator is read once, here
        label_list = check_labels(labels)
        if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}.")
        top_k = int(top_k)
        text_emb = self.label_embeddings(label_list, templates)
        try:
            img_emb, error = self.encode_image(images if single else items), None
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
            raise BatchError("images", error.failures, results, n)  # a lone image raised InputError
        return results[0] if single else results

    def similarity(
        self, images: ImageLike | Sequence[ImageLike], texts: str | Sequence[str]
    ) -> np.ndarray:
        """Cosine similarity matrix (N_images, N_texts).

        Unreadable images or unusable texts raise ``BatchError`` whose ``.results`` is the
        matrix with their rows / columns NaN. It describes the images when any failed (the
        texts' own ``BatchError`` is then its ``__cause__``), else the texts."""
        try:
            image, image_error = self.encode_image(images), None
        except BatchError as exc:
            image, image_error = exc.results, exc
        try:
            text, text_error = self.encode_text(texts), None
        except BatchError as exc:
            text, text_error = exc.results, exc
        if image_error is None and text_error is None:
            return image @ text.T
        shape = (image_error.total if image_error else len(image),
                 text_error.total if text_error else len(text))  # fmt: skip
        both = image is not None and text is not None
        out = image @ text.T if both else np.full(shape, np.nan, dtype=np.float32)  # NaN stays NaN
        first = image_error or text_error
        raise BatchError("images" if image_error else "texts", first.failures, out,
                         first.total) from (text_error if image_error else None)

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
