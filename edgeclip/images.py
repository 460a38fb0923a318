"""Load any common image input into an RGB ``PIL.Image`` (no torch).

``load_image`` accepts a path, encoded bytes, a binary file object, a PIL image or a numpy
array, and turns every way an input can be bad into an ``InputError`` that names the input.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edgeclip.errors import InputError

__all__ = ["DEFAULT_MAX_PIXELS", "ACCEPTED", "load_image"]

# Pillow's own default (Image.MAX_IMAGE_PIXELS): 1 GiB of 24-bit pixels / 4 / 3 ≈ 89.5 MP.
DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)

ACCEPTED = (
    "a path (str or pathlib.Path), bytes/bytearray/memoryview of an encoded image, a binary "
    "file object, a PIL.Image.Image, or a numpy array HxWx3 / HxWx4 / HxW of dtype uint8, "
    "uint16 or float in [0, 1]"
)

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255, 255)


def load_image(x: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return ``x`` as an RGB PIL image, EXIF-rotated, with any transparency composited on white.

    ``max_pixels`` bounds width*height of encoded inputs, checked from the header before any
    decoding (``None`` disables edgeclip's check; Pillow's own ``Image.MAX_IMAGE_PIXELS`` still
    applies at twice its value). Raises ``InputError`` naming the input for anything unreadable.
    """
    if isinstance(x, Image.Image):
        name = f"PIL image (mode {x.mode}, {x.width}x{x.height})"
        # A lazily decoded ImageFile costs nothing until .load(), so its size is still checkable.
        if isinstance(x, ImageFile.ImageFile):
            _check_pixels(x.size, max_pixels, name)
        _force_load(x, name)
        return _to_rgb(_exif_transpose(x), name)
    if isinstance(x, np.ndarray):
        return _from_array(x)
    if isinstance(x, (str, os.PathLike)):
        return _from_path(x, max_pixels)
    if isinstance(x, (bytes, bytearray, memoryview)):
        data = bytes(x)
        return _decode(data, f"bytes input ({len(data)} bytes)", max_pixels)
    if hasattr(x, "read"):
        return _from_fileobj(x, max_pixels)
    raise InputError(
        f"Cannot load an image from an object of type {type(x).__module__}.{type(x).__qualname__}; "
        f"edgeclip accepts {ACCEPTED}."
    )


def _from_path(p: str | os.PathLike, max_pixels: int | None) -> Image.Image:
    raw = os.fspath(p)
    name = f"'{raw}'"
    if isinstance(raw, str) and raw.startswith(("http://", "https://")):
        raise InputError(
            f"Cannot load image {name}: edgeclip does not download URLs; fetch the file first "
            "and pass its path or its bytes."
        )
    path = Path(raw).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"Cannot load image {name}: no such file; check the path.") from None
    except OSError as e:
        raise InputError(f"Cannot load image {name}: {e.strerror or e}.") from e
    if path.is_dir():
        raise InputError(
            f"Cannot load image {name}: it is a directory; pass the image files inside it."
        )
    if st.st_size == 0:
        raise InputError(f"Cannot load image {name}: the file is empty (0 bytes).")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"Cannot load image {name}: cannot read it ({e.strerror or e}).") from e
    return _decode(data, name, max_pixels)


def _from_fileobj(f: Any, max_pixels: int | None) -> Image.Image:
    label = getattr(f, "name", None)
    name = f"file object '{label}'" if isinstance(label, str) else f"file object {type(f).__name__}"
    try:
        data = f.read()
    except Exception as e:  # any reader failure is this input's failure
        raise InputError(f"Cannot load image from {name}: reading it failed ({e}).") from e
    if isinstance(data, str):
        raise InputError(
            f"Cannot load image from {name}: it is a text stream; open the file in binary mode ('rb')."
        )
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(
            f"Cannot load image from {name}: .read() returned {type(data).__name__}, not bytes."
        )
    return _decode(bytes(data), name, max_pixels)


def _decode(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    if not data:
        raise InputError(f"Cannot load image {name}: it is empty (0 bytes).")
    try:
        # Image.open reads the header only; Pillow's bomb warning is silenced here because our
        # own limit (checked next) decides, and its hard DecompressionBombError is converted below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise InputError(f"Cannot load image {name}: {e} {_bomb_fix(max_pixels)}") from e
    except UnidentifiedImageError as e:
        raise InputError(f"Cannot load image {name}: {_not_an_image_reason(data)}") from e
    except Exception as e:  # decoders raise many types on corrupt headers
        raise InputError(f"Cannot load image {name}: the file is corrupt ({e}).") from e
    _check_pixels(im.size, max_pixels, name)
    _force_load(im, name)
    return _to_rgb(_exif_transpose(im), name)


def _not_an_image_reason(data: bytes) -> str:
    head = data[:32]
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypmsf1"):
        return "it is a HEIC/HEIF image, which Pillow cannot read; `pip install pillow-heif` and call pillow_heif.register_heif_opener()."
    return (
        "it is not an image file Pillow can read (supported: JPEG, PNG, WebP, GIF, BMP, TIFF, ...)."
    )


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InputError(f"Cannot load image {name}: it has no pixels ({w}x{h}).")
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(
            f"Cannot load image {name}: {w}x{h} = {w * h:,} pixels exceeds the limit of "
            f"{max_pixels:,} (a possible decompression bomb). {_LIMIT_FIX}"
        )


_LIMIT_FIX = ("If you trust this file, raise the limit (edgeclip.load(..., max_pixels=None or a "
              "larger number); --max-pixels for `edgeclip index` and `serve`), or downscale it first.")  # fmt: skip


def _bomb_fix(max_pixels: int | None) -> str:
    """Pillow refuses more than twice its own ``MAX_IMAGE_PIXELS`` before edgeclip's limit is
    asked, so both limits may need raising."""
    pillow = Image.MAX_IMAGE_PIXELS
    ours = max_pixels is not None and (pillow is None or max_pixels <= 2 * pillow)
    return ((f"It is above edgeclip's limit of {max_pixels:,} pixels too. " if ours else "")
            + "If you trust this file, set PIL.Image.MAX_IMAGE_PIXELS = None (Pillow's limit)"
            + (" and raise edgeclip's (edgeclip.load(..., max_pixels=None); --max-pixels for "
               "`edgeclip index` and `serve`)" if ours else "") + ", or downscale it first.")


def _force_load(im: Image.Image, name: str) -> None:
    # .load() decodes now, so truncation and corrupt data surface here, not deep inside resize.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Exception as e:  # decoders raise OSError, SyntaxError, struct.error, ...
        reason = str(e) or type(e).__name__
        if "truncated" in reason:
            reason = f"the file is truncated ({reason})"
        raise InputError(f"Cannot load image {name}: decoding failed: {reason}.") from e


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block must not make a decodable image unusable
        return im
    if orientation in (None, 1):
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    try:
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _wide_gray_to_rgb(im)
        if mode in _ALPHA_MODES or im.info.get("transparency") is not None:
            # Same as transformers' convert_to_rgb: alpha-composite on opaque white. Pillow
            # converts premultiplied La only to LA.
            rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE)
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")
    except Exception as e:
        raise InputError(
            f"Cannot load image {name}: its mode {mode!r} cannot be converted to RGB ({e})."
        ) from e


def _wide_gray_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale to 8-bit RGB (Pillow's convert would clip)."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        # Float images in [0, 1] are scaled like float arrays; otherwise values are 0..255.
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    elif im.mode == "I" and a.size and a.min() >= 0 and a.max() <= 255:
        g = a.astype(np.uint8)  # an 8-bit image stored in mode I (e.g. L.convert("I"))
    else:
        # 16-bit data: v / 257 maps 0..65535 onto 0..255 exactly at both ends.
        g = ((np.clip(a.astype(np.int64), 0, 65535) * 2 + 257) // 514).astype(np.uint8)
    return Image.fromarray(g, "L").convert("RGB")


def _from_array(a: np.ndarray) -> Image.Image:
    name = f"array of shape {a.shape} and dtype {a.dtype}"
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        hint = ""
        if a.ndim == 3 and a.shape[0] in (1, 3, 4):
            hint = " It looks channels-first; pass a.transpose(1, 2, 0)."
        elif a.ndim == 4:
            hint = " For a batch, pass a list of images (or iterate over the first axis)."
        raise InputError(
            f"Cannot load image from {name}: expected HxW (grayscale), HxWx3 (RGB) or "
            f"HxWx4 (RGBA), channels last.{hint}"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"Cannot load image from {name}: it has no pixels.")
    a = _array_to_uint8(a, name)
    mode = "L" if a.ndim == 2 else {3: "RGB", 4: "RGBA"}[a.shape[-1]]
    im = Image.fromarray(np.ascontiguousarray(a), mode)
    return _to_rgb(im, name)


def _array_to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)  # round(v / 257)
    if np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32, copy=False)
        if not np.isfinite(f).all():
            raise InputError(f"Cannot load image from {name}: it contains NaN or infinity.")
        lo, hi = float(f.min()), float(f.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"Cannot load image from {name}: float arrays must hold values in [0, 1], "
                f"got [{lo:g}, {hi:g}]; divide by 255 (or pass uint8)."
            )
        return np.rint(f * 255.0).astype(np.uint8)
    raise InputError(
        f"Cannot load image from {name}: dtype {a.dtype} is not supported; pass uint8, "
        "uint16, or float in [0, 1] (e.g. a.astype(np.uint8) for 0..255 integers)."
    )
