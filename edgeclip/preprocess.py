"""CLIP image preprocessing in PIL + numpy, numerically matching transformers' CLIPImageProcessor.

Pipeline ("shortest" + "center", CLIP's default): resize the shortest side to ``resize_size``
with PIL bicubic (the long side is ``int(size * long / short)``, as transformers computes it),
centre-crop ``image_size`` (offsets ``(dim - crop) // 2``), scale by 1/255, normalise.
Pixels are bit-identical to transformers' PIL backend (same Pillow calls, and per-channel
lookup tables holding its exact float32 arithmetic), except for aspect ratios beyond ~80:1,
where only the kept window is resampled to avoid a gigantic intermediate image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from edgeclip.errors import InputError
from edgeclip.images import DEFAULT_MAX_PIXELS, load_image

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "DEFAULT_CONFIG", "WINDOW", "Preprocessor", "hf_to_cfg"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 224,
    "resize": "shortest",
    "interpolation": "bicubic",
    "crop": "center",
    "mean": list(OPENAI_CLIP_MEAN),
    "std": list(OPENAI_CLIP_STD),
}
# Optional key: "resize_size" (int), the shortest-side target when it differs from the crop
# (e.g. resize 256 then crop 224); defaults to image_size.
_KEYS = set(DEFAULT_CONFIG) | {"resize_size"}
_CHOICES = {
    "resize": ("shortest", "squash"),
    "interpolation": ("bicubic", "bilinear"),
    "crop": ("center", "none"),
}
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# Hugging Face `resample` codes (PILImageResampling values) this runtime implements.
_HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}
# Above this many resized pixels (16 MB as RGBA; an aspect ratio beyond ~80:1 at 224) only the
# cropped window is resampled instead of the whole resized image.
_FULL_RESIZE_MAX_PIXELS = 4_000_000

_IMMUTABLE_INPUTS = (str, bytes, os.PathLike, np.ndarray)

Result = tuple[np.ndarray, list[int], dict[int, str]]

#: Images preprocessed at a time by ``Preprocessor.windows`` (at least one model batch): a
#: window of 224 px pixels is 19 MB, where a whole 10,000-photo list at once was 6 GB.
WINDOW = 32


class Preprocessor:
    """Turns images into CLIP ``pixel_values`` (float32, N x 3 x S x S).

    ``cfg`` keys (all optional, CLIP's defaults): ``image_size``, ``resize`` ("shortest" |
    "squash"), ``interpolation`` ("bicubic" | "bilinear"), ``crop`` ("center" | "none"),
    ``mean``, ``std`` (3 floats each) and ``resize_size``. ``max_pixels`` is passed to
    ``load_image`` (decompression-bomb limit). ``threads``: how many images of a batch are
    decoded and resized at once (Pillow releases the GIL there); ``None`` = up to 4, by CPU count.
    """

    def __init__(
        self,
        cfg: dict[str, Any] | None = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
    ) -> None:
        self.cfg = _validate(cfg)
        self.max_pixels = max_pixels
        if threads is None:
            threads = min(4, os.cpu_count() or 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"Preprocessor threads={threads!r} must be a positive integer.")
        self.threads = threads
        self.image_size: int = self.cfg["image_size"]
        self._resample = _RESAMPLE[self.cfg["interpolation"]]
        self._lut = _normalise_lut(self.cfg["mean"], self.cfg["std"])

    @classmethod
    def from_hf(cls, preprocessor_config: dict[str, Any], **kwargs: Any) -> Preprocessor:
        """Build from a Hugging Face ``preprocessor_config.json`` (CLIPImageProcessor) dict.

        ``kwargs`` (``max_pixels``, ``threads``) are passed to the constructor.
        """
        return cls(hf_to_cfg(preprocessor_config), **kwargs)

    def __repr__(self) -> str:
        return f"Preprocessor({self.cfg!r})"

    def one(self, image: Any, *, max_pixels: int | None | str = "own") -> np.ndarray:
        """Preprocess a single image to a float32 (3, S, S) array; raises ``InputError``.

        ``max_pixels``: this call's bomb limit instead of the preprocessor's own (``None`` for
        an image the caller decoded under its own limit)."""
        limit = self.max_pixels if max_pixels == "own" else max_pixels
        out = np.empty((3, self.image_size, self.image_size), np.float32)
        self._into(load_image(image, max_pixels=limit), out)
        return out

    def __call__(self, images: Iterable[Any]) -> Result:
        """Preprocess a batch; one bad image never loses the good ones.

        Returns ``(pixel_values, good_indices, failures)``: ``pixel_values`` is float32
        (M, 3, S, S) holding the M images that loaded, in input order; ``good_indices[k]`` is
        the input index of row k; ``failures`` maps each failed input index to its reason.
        """
        items = _as_list(images)
        s = self.image_size
        out = np.empty((len(items), 3, s, s), np.float32)

        def work(i: int) -> str | None:
            try:
                self._into(load_image(items[i], max_pixels=self.max_pixels), out[i])
            except InputError as e:
                return str(e)
            return None

        n_threads = min(self.threads, len(items))
        # The same lazily decoded PIL image or file object twice must not be read by two
        # threads at once.
        shared = [id(x) for x in items if not isinstance(x, _IMMUTABLE_INPUTS)]
        if len(set(shared)) != len(shared):
            n_threads = 1
        if n_threads > 1:
            from concurrent.futures import ThreadPoolExecutor  # 8 ms of import; batches only

            with ThreadPoolExecutor(n_threads, thread_name_prefix="edgeclip-pre") as pool:
                errors = list(pool.map(work, range(len(items))))
        else:
            errors = [work(i) for i in range(len(items))]
        failures = {i: e for i, e in enumerate(errors) if e is not None}
        good = [i for i, e in enumerate(errors) if e is None]
        # Compact the good rows in place; row <= i, so no row is overwritten before it moves.
        for row, i in enumerate(good):
            if row != i:
                out[row] = out[i]
        return out[: len(good)], good, failures

    def windows(self, images: Sequence[Any], size: int = WINDOW) -> Iterator[tuple[int, Result]]:
        """``(start, self(images[start:start + size]))`` for each window, in order, the next
        window preprocessed on a thread while the caller works on this one (two windows at most
        in memory). Only one window's inputs are ever read at a time, so a file object or lazy
        PIL image that appears twice is never read by two threads at once."""
        starts = range(0, len(images), max(1, int(size)))
        if len(starts) == 1:
            yield 0, self(images)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="edgeclip-window") as pool:
            pending = pool.submit(self, images[: starts.step])
            for start in starts:
                done = pending.result()
                nxt = start + starts.step
                if nxt < len(images):
                    pending = pool.submit(self, images[nxt : nxt + starts.step])
                yield start, done

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) crops → float32 (N, 3, S, S) pixels, exactly as ``__call__`` does."""
        crops = np.asarray(crops, np.uint8)
        out = np.empty((len(crops), 3, crops.shape[1], crops.shape[2]), np.float32)
        for c in range(3):
            np.take(self._lut[c], crops[..., c], out=out[:, c], mode="clip")
        return out

    def resize_crop(self, im: Image.Image) -> Image.Image:
        """The resize and crop of the pipeline alone (RGB in, S × S RGB out)."""
        return self._resize_crop(im)

    # -- the numeric pipeline -------------------------------------------------------------

    def _into(self, im: Image.Image, out: np.ndarray) -> None:
        """Resize/crop the RGB image ``im`` and write its normalised CHW pixels into ``out``."""
        pixels = np.asarray(self._resize_crop(im))
        # Per-channel lookup tables hold exactly transformers' float32 rescale + normalise
        # of each uint8 value: bit-identical results, faster than float arithmetic.
        for c in range(3):
            np.take(self._lut[c], pixels[:, :, c], out=out[c], mode="clip")

    def _resize_crop(self, im: Image.Image) -> Image.Image:
        cfg, s = self.cfg, self.image_size
        w, h = im.size
        if cfg["resize"] == "squash":
            if (w, h) == (s, s):
                return im
            return im.resize((s, s), self._resample)
        r = cfg["resize_size"]
        # transformers' get_resize_output_image_size(default_to_square=False): int() truncation.
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = r, int(r * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        if nw < s or nh < s:
            # Crop larger than the resized image: transformers zero-pads; do exactly that.
            return _center_crop_pad(im.resize((nw, nh), self._resample), s)
        top, left = (nh - s) // 2, (nw - s) // 2
        if (nw, nh) == (w, h):
            return im.crop((left, top, left + s, top + s))
        if nw * nh <= _FULL_RESIZE_MAX_PIXELS:
            # The same full resize then crop as transformers: bit-identical pixels. (Fusing the
            # crop into PIL's ``box`` would resample fewer pixels, but Pillow >= 13 picks the
            # order of its two passes from the scale factors, which the box changes, and the
            # intermediate uint8 clipping then differs by a few levels.)
            return im.resize((nw, nh), self._resample).crop((left, top, left + s, top + s))
        # Extreme aspect ratios: resample only the kept window, so a 1x100000 strip does not
        # allocate a 224x22,400,000 image. The two passes run explicitly, horizontal first
        # (Pillow <= 12 always does; 13 sometimes goes vertical first), so pixels can differ
        # from transformers' by the intermediate uint8 clipping: a few levels at most on photos.
        x0, x1 = left * w / nw, (left + s) * w / nw
        y0, y1 = top * h / nh, (top + s) * h / nh
        # Source pixels outside the window (plus the filter's reach) never contribute.
        reach = math.ceil(2 * max(1.0, w / nw, h / nh)) + 1
        cx0, cy0 = max(0, math.floor(x0) - reach), max(0, math.floor(y0) - reach)
        cx1, cy1 = min(w, math.ceil(x1) + reach), min(h, math.ceil(y1) + reach)
        win = im.crop((cx0, cy0, cx1, cy1))
        rows = win.resize((s, cy1 - cy0), self._resample, box=(x0 - cx0, 0, x1 - cx0, cy1 - cy0))
        return rows.resize((s, s), self._resample, box=(0, y0 - cy0, s, y1 - cy0))


def _center_crop_pad(im: Image.Image, s: int) -> Image.Image:
    """transformers' center_crop when the crop is larger than the image (pads with zeros)."""
    w, h = im.size
    canvas = Image.new("RGB", (max(w, s), max(h, s)), (0, 0, 0))
    pad_left, pad_top = math.ceil((canvas.width - w) / 2), math.ceil((canvas.height - h) / 2)
    canvas.paste(im, (pad_left, pad_top))
    left = (w - s) // 2 + pad_left
    top = (h - s) // 2 + pad_top
    return canvas.crop((left, top, left + s, top + s))


def _normalise_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    # Same operation order and dtypes as transformers: float64 v*(1/255) -> float32, then
    # (x - mean) / std in float32.
    x = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    m = np.asarray(mean, np.float32)[:, None]
    sd = np.asarray(std, np.float32)[:, None]
    return np.ascontiguousarray((x[None, :] - m) / sd, dtype=np.float32)


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)  # an (N, H, W, C) stack is a batch of N arrays
    if isinstance(images, (str, bytes, bytearray, memoryview, np.ndarray, Image.Image)) or hasattr(
        images, "read"
    ):
        raise InputError(
            f"Preprocessor(...) takes a list of images, got a single {type(images).__name__}; "
            "wrap it in a list or call .one(image)."
        )
    try:
        return list(images)
    except TypeError:
        raise InputError(
            f"Preprocessor(...) takes a list of images, got {type(images).__name__}."
        ) from None


def _validate(cfg: dict[str, Any] | None) -> dict[str, Any]:
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise InputError(f"Preprocessor config must be a dict, got {type(cfg).__name__}.")
    unknown = sorted(set(cfg) - _KEYS)
    if unknown:
        raise InputError(
            f"Preprocessor config has unknown key(s) {unknown}; valid keys: {sorted(_KEYS)}."
        )
    out = {**DEFAULT_CONFIG, **cfg}
    for key in ("image_size", "resize_size"):
        v = out.get(key, out["image_size"])
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 8192:
            raise InputError(
                f"Preprocessor config {key}={v!r} must be an integer between 1 and 8192 (CLIP uses 224)."
            )
        out[key] = int(v)
    for key, choices in _CHOICES.items():
        if out[key] not in choices:
            raise InputError(
                f"Preprocessor config {key}={out[key]!r} is not one of {list(choices)}."
            )
    if out["resize"] == "shortest" and out["crop"] == "none":
        raise InputError(
            "Preprocessor config resize='shortest' with crop='none' gives non-square images; "
            "use crop='center', or resize='squash'."
        )
    if out["resize"] == "squash" and out["resize_size"] != out["image_size"]:
        raise InputError("Preprocessor config resize_size only applies to resize='shortest'.")
    for key in ("mean", "std"):
        try:
            vals = [float(v) for v in out[key]]
        except (TypeError, ValueError):
            vals = []
        if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
            raise InputError(
                f"Preprocessor config {key}={out[key]!r} must be 3 finite numbers (R, G, B)."
            )
        if key == "std" and min(vals) <= 0:
            raise InputError(f"Preprocessor config std={vals} must be positive.")
        out[key] = vals
    return out


def hf_to_cfg(pc: dict[str, Any]) -> dict[str, Any]:
    """Map a Hugging Face CLIPImageProcessor config dict to a ``Preprocessor`` cfg."""
    if not isinstance(pc, dict):
        raise InputError(f"preprocessor_config must be a dict, got {type(pc).__name__}.")
    where = "preprocessor_config.json"
    for flag in ("do_rescale", "do_normalize", "do_resize"):
        if pc.get(flag, True) is False:
            raise InputError(f"{where} sets {flag}=false, which edgeclip does not support.")
    factor = pc.get("rescale_factor", 1 / 255)
    if abs(float(factor) - 1 / 255) > 1e-9:
        raise InputError(f"{where} rescale_factor={factor} is not 1/255; not supported.")
    resample = pc.get("resample", 3)
    if resample not in _HF_RESAMPLE:
        raise InputError(
            f"{where} resample={resample!r} is not supported; edgeclip implements 2 (bilinear) "
            "and 3 (bicubic)."
        )
    size = pc.get("size", {"shortest_edge": 224})
    if isinstance(size, int):  # very old configs: an int meaning the shortest edge
        size = {"shortest_edge": size}
    crop = pc.get("crop_size", {"height": 224, "width": 224})
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    do_crop = pc.get("do_center_crop", True)
    cfg: dict[str, Any] = {
        "interpolation": _HF_RESAMPLE[resample],
        "mean": list(pc.get("image_mean", OPENAI_CLIP_MEAN)),
        "std": list(pc.get("image_std", OPENAI_CLIP_STD)),
    }
    if "shortest_edge" in size and "longest_edge" not in size:
        if not do_crop:
            raise InputError(f"{where}: shortest_edge resize without centre crop is not supported.")
        if crop.get("height") != crop.get("width"):
            raise InputError(f"{where} crop_size={crop} is not square; not supported.")
        cfg.update(
            resize="shortest",
            crop="center",
            image_size=crop["height"],
            resize_size=size["shortest_edge"],
        )
    elif "height" in size and "width" in size and size["height"] == size["width"]:
        if do_crop and (crop.get("height"), crop.get("width")) != (size["height"],) * 2:
            raise InputError(
                f"{where}: a square resize followed by a smaller crop is not supported."
            )
        cfg.update(resize="squash", crop="none", image_size=size["height"])
    else:
        raise InputError(f"{where} size={size} is not supported (need shortest_edge or a square).")
    return cfg
