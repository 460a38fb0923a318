"""Thumbnails of indexed photos, read as indexing reads them (JPEGs drafted in the DCT domain,
EXIF-rotated, under a pixel limit): ``/v1/photos/ID`` in ``edgeclip serve --index`` and the
inline previews of ``edgeclip search --preview`` (``terminal_images.py``)."""

from __future__ import annotations

import io

__all__ = ["thumbnail", "render_thumbnail"]


def thumbnail(path: str, size: int, max_pixels: int):
    """The photo as a PIL image whose longest side is ``size`` (never enlarged)."""
    from PIL import Image

    from .pipeline import read_image

    im = read_image(path, draft_to=size, max_pixels=max_pixels)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return im


def render_thumbnail(path: str, size: int, max_pixels: int, fmt: str = "JPEG") -> bytes:
    """``thumbnail`` encoded: a JPEG (quality 85) by default, or a PNG."""
    buf = io.BytesIO()
    im = thumbnail(path, size, max_pixels)
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=85)
    else:
        im.save(buf, fmt)
    return buf.getvalue()
