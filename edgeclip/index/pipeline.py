"""Decode and preprocess on worker threads while the model runs on the previous batch.

Pillow releases the GIL while it decodes and resizes, and the runtimes release it while they
run, so threads overlap the two. Large JPEGs are decoded with ``Image.draft``: libjpeg scales
by 1/2, 1/4 or 1/8 in the DCT domain, to the smallest size still at least the resize target,
and the preprocessor's exact resize runs on that. A 12 MP photo then costs a fraction of a
full decode; the embedding drift this causes is measured in ``benchmarks/index_bench.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeclip.errors import InputError
from edgeclip.images import DEFAULT_MAX_PIXELS, load_image

from .previews import decode_preview
from .walk import IMAGE_SUFFIXES, SNIFF_BYTES, FileEntry, image_format

__all__ = ["Outcome", "EmbedPipeline", "decode", "embed_pixels", "read_file", "read_image"]



#: An EXIF thumbnail lives in APP1 (at most 64 KiB) near the start of the file.
PREVIEW_HEAD_BYTES = 128 * 1024
_JPEG_FORMATS = ("JPEG", "MPO")  # Pillow opens a JPEG with an MPF block (e.g. Ultra HDR) as MPO


@dataclass
class Outcome:
    """What happened to one file: ``vector`` (float32, D) for an image, else a reason."""

    entry: FileEntry
    status: str  # "ok" | "failed" | "other" | "known" (with want_hash: bytes already indexed)
    vector: np.ndarray | None = None
    reason: str | None = None
    sha256: str | None = None


class _NotAnImage(Exception):
    pass


def read_file(path: str) -> tuple[str, bytes]:
    """(format, bytes) of an image file; ``InputError`` if unreadable, ``_NotAnImage`` if not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
            fmt = image_format(head, path)
            if fmt is None:
                raise _NotAnImage(_why_not(path, head))
            return fmt, head + f.read()
    except OSError as e:
        hint = "; fix its permissions or --exclude it" if isinstance(e, PermissionError) else ""
        raise InputError(f"cannot read it ({e.strerror or e}){hint}") from e


def _open_lazily(data: bytes) -> Image.Image:
    """``Image.open`` (header only); edgeclip's own pixel limit replaces Pillow's warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def decode(
    data: bytes,
    fmt: str,
    *,
    draft_to: int | None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    preview_to: int | None = None,
) -> Image.Image:
    """Decode to RGB (EXIF-rotated); JPEGs drafted to >= ``draft_to`` px a side. ``InputError``.

    ``preview_to``: decode a JPEG's embedded preview instead when one covers that many px
    (``previews.py``).
    """
    try:
        im = _open_lazily(data)
    except Image.DecompressionBombError as e:
        raise InputError(f"{e} (a possible decompression bomb); raise --max-pixels if you trust it") from e
    except UnidentifiedImageError as e:  # its text is only "cannot identify <BytesIO at 0x…>"
        raise InputError(f"it looks like {fmt} but cannot be opened: the file is corrupt, or cut "
                         "short before its first image data") from e  # fmt: skip
    except (OSError, SyntaxError, ValueError) as e:
        what = "truncated" if "truncat" in str(e).lower() else "corrupt"
        raise InputError(f"it looks like {fmt} but cannot be opened: the file is {what} ({e})") from e
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(
            f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (a possible "
            "decompression bomb); raise --max-pixels if you trust it"
        )
    if preview_to and im.format in _JPEG_FORMATS:
        preview = decode_preview(im, data, preview_to, draft_to)
        if preview is not None:
            return preview
    if draft_to and im.format in _JPEG_FORMATS:
        im.draft("RGB", (draft_to, draft_to))
    name = f"PIL image (mode {im.mode}, {im.width}x{im.height})"
    try:
        return load_image(im, max_pixels=None)
    except InputError as e:
        text = str(e)
        prefix = f"Cannot load image {name}: "
        raise InputError(text[len(prefix) :] if text.startswith(prefix) else text) from e


def head_preview(
    path: str, preview_to: int, draft_to: int | None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image | None:
    """A JPEG's embedded preview read from the file's first ``PREVIEW_HEAD_BYTES`` alone.

    ``None`` when the head holds no usable preview (MPF previews sit after the main image) or
    anything is wrong: the caller then reads and decodes the whole file, which reports errors.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(PREVIEW_HEAD_BYTES)
        if image_format(head[:SNIFF_BYTES], path) != "JPEG":
            return None
        im = _open_lazily(head)
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            return None
        return decode_preview(im, head, preview_to, draft_to)
    except Exception:
        return None


def read_image(
    path: str,
    *,
    draft_to: int | None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    preview_to: int | None = None,
) -> Image.Image:
    """``decode(read_file(path))``: what indexing does to one file."""
    fmt, data = read_file(path)
    return decode(data, fmt, draft_to=draft_to, max_pixels=max_pixels, preview_to=preview_to)


def _why_not(path: str, head: bytes) -> str:
    if os.path.splitext(path)[1].lower() not in IMAGE_SUFFIXES:
        return ""  # not an image and not named like one: left out without a word
    if not head:
        return "the file is empty (0 bytes)"
    if head[4:8] == b"ftyp":
        return "a HEIC/AVIF image, which this install cannot decode; `pip install pillow-heif`"
    return "named like an image but its content is not JPEG, PNG, WebP, GIF, TIFF, BMP or PPM"


def embed_pixels(model: Any, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """L2-normalised embeddings of preprocessed pixels, each independent of its batch neighbours."""
    return model.encode_pixels(pixels, batch_size, invariant=True)


class EmbedPipeline:
    """Files in, ``Outcome`` s out (in input order), decoding ``workers`` files ahead of the model.

    ``draft``: DCT-domain downscaling of JPEGs (see the module doc). ``previews``: decode a
    JPEG's embedded preview when it covers the resize target (``previews.py``). ``want_hash``:
    sha256 of every image's bytes, from the same read.
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        draft: bool = True,
        previews: bool = False,
        want_hash: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.model = model
        self.batch_size = int(batch_size)
        self.workers = workers or min(4, os.cpu_count() or 1)
        cfg = model.preprocessor.cfg
        target = cfg.get("resize_size") or cfg["image_size"]
        self.draft_to = target if draft else None
        self.preview_to = target if previews else None
        self.want_hash = want_hash
        self.max_pixels = max_pixels
        #: sha256 digests already in the index (with ``want_hash``): those files are not decoded
        self.known: set[str] = set()
        #: paths (with ``want_hash``) whose stored vector is current but has no sha256 yet: hashed,
        #: and reported as "known", not decoded
        self.hash_only: set[str] = set()

    def _decode(self, entry: FileEntry) -> tuple[str, Any, str | None]:
        try:
            if self.preview_to and not self.want_hash:  # the preview alone: skip reading the rest
                im = head_preview(entry.path, self.preview_to, self.draft_to, self.max_pixels)
                if im is not None:
                    return "ok", self.model.preprocessor.one(im, max_pixels=None), None
            fmt, data = read_file(entry.path)
            digest = hashlib.sha256(data).hexdigest() if self.want_hash else None
            if digest is not None and (digest in self.known or entry.path in self.hash_only):
                return "known", None, digest  # same bytes as an indexed file: no decode
            im = decode(
                data, fmt, draft_to=self.draft_to, max_pixels=self.max_pixels, preview_to=self.preview_to
            )
            return "ok", self.model.preprocessor.one(im, max_pixels=None), digest
        except _NotAnImage as e:
            reason = str(e)
            return ("failed" if reason else "other"), reason or None, None
        except InputError as e:
            return "failed", str(e), None
        except Exception as e:  # a decoder bug on one file must not end the run
            return "failed", f"unexpected {type(e).__name__}: {e}", None

    def run(self, entries: Iterable[FileEntry]) -> Iterator[Outcome]:
        prefetch = 2 * self.batch_size + self.workers
        pending: deque[tuple[FileEntry, Future]] = deque()
        batch: list[tuple[FileEntry, np.ndarray, str | None]] = []
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="edgeclip-decode")
        try:
            for entry in entries:
                pending.append((entry, pool.submit(self._decode, entry)))
                while pending and (len(pending) >= prefetch or pending[0][1].done()):
                    yield from self._take(*pending.popleft(), batch)
            while pending:
                yield from self._take(*pending.popleft(), batch)
            yield from self._flush(batch)
        finally:
            # On Ctrl-C or an early close, queued decodes are dropped rather than waited for.
            pool.shutdown(wait=True, cancel_futures=True)

    def _take(self, entry: FileEntry, fut: Future, batch: list) -> Iterator[Outcome]:
        status, value, digest = fut.result()
        if status != "ok":
            yield Outcome(entry, status, reason=value, sha256=digest)
            return
        batch.append((entry, value, digest))
        if len(batch) >= self.batch_size:
            yield from self._flush(batch)

    def _flush(self, batch: list) -> Iterator[Outcome]:
        if not batch:
            return
        pixels = np.stack([p for _, p, _ in batch])
        vectors = embed_pixels(self.model, pixels, self.batch_size)
        for (entry, _, digest), vec in zip(batch, vectors):
            yield Outcome(entry, "ok", vector=vec, sha256=digest)
        batch.clear()
