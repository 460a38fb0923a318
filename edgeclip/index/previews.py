"""Embedded previews: the reduced copy of the photo that a camera stores inside the JPEG.

Cameras and phones store a small JPEG next to the main image: the EXIF thumbnail (IFD1, at
most 64 KB; 160x120 on many cameras, 320x240 to 640x480 on many phones) and, in the Multi-Picture
Format (CIPA DC-007), "large thumbnails" of VGA or Full-HD size. Decoding one of those instead
of the 12 MP main image skips the entropy decoding of the whole file, which is what bounds
indexing speed on a small CPU even with draft mode.

A preview is used only when its short side covers the resize target and its aspect ratio is
the main image's. It stays opt-in (``Index(previews=True)``, ``--previews``): an editor that
rewrites the main image but not the preview leaves a stale preview, and nothing in the file
tells the two apart.
"""

from __future__ import annotations

import io

from PIL import ExifTags, Image

__all__ = ["decode_preview", "open_preview", "preview_jpeg"]

_JPEG_OFFSET, _JPEG_LENGTH = 0x0201, 0x0202  # IFD1 tags: JPEGInterchangeFormat(Length)
_MP_ENTRIES = 0xB002
# MP types 0x010001 and 0x010002, as Pillow names them
_MP_LARGE_THUMBNAILS = frozenset({"Large Thumbnail (VGA Equivalent)", "Large Thumbnail (Full HD Equivalent)"})
_ASPECT_SLACK = 0.01  # thumbnails are scaled from the full frame, so aspect ratios match
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}  # fmt: skip


def _exif_thumbnail(im: Image.Image) -> list[bytes]:
    raw = im.info.get("exif") or b""
    tiff = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    ifd1 = im.getexif().get_ifd(ExifTags.IFD.IFD1)
    start, length = ifd1.get(_JPEG_OFFSET), ifd1.get(_JPEG_LENGTH)
    if not isinstance(start, int) or not isinstance(length, int) or length <= 0:
        return []
    blob = tiff[start : start + length]
    return [blob] if len(blob) == length else []  # a short slice: truncated file


def _mpf_thumbnails(im: Image.Image, data: bytes) -> list[bytes]:
    entries = (getattr(im, "mpinfo", None) or {}).get(_MP_ENTRIES) or []
    base = _mpf_base(data) if entries else None
    if base is None:
        return []
    blobs = [
        (data[base + e["DataOffset"] : base + e["DataOffset"] + e["Size"]], e["Size"])
        for e in entries[1:]  # the first entry is the main image
        if e.get("Attribute", {}).get("MPType") in _MP_LARGE_THUMBNAILS
    ]
    return [blob for blob, size in blobs if len(blob) == size]  # short: beyond what was read


def _mpf_base(data: bytes) -> int | None:
    """Where the MP header's TIFF block starts (entry offsets count from it); None if absent."""
    i = 2  # after SOI; walk the marker segments up to the start of scan
    while i + 8 <= len(data) and data[i] == 0xFF and data[i + 1] != 0xDA:
        if data[i + 1] == 0xE2 and data[i + 4 : i + 8] == b"MPF\x00":
            return i + 8
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def preview_jpeg(im: Image.Image, data: bytes, min_side: int) -> bytes | None:
    """The smallest embedded JPEG of ``im`` (opened from ``data``) that covers ``min_side``.

    ``None``: no preview, or none large enough, or none with the main image's aspect ratio.
    Never raises for a malformed EXIF or MPF block.
    """
    try:
        candidates = _exif_thumbnail(im) + _mpf_thumbnails(im, data)
    except Exception:  # a malformed block only means no preview
        return None
    w, h = im.size
    best: tuple[bytes, int] | None = None  # (bytes, pixel count)
    for blob in candidates:
        try:
            size = Image.open(io.BytesIO(blob)).size if blob[:2] == b"\xff\xd8" else None
        except Exception:
            size = None
        if size is None or min(size) < min_side or size[0] * size[1] >= w * h:
            continue
        if abs(size[0] / size[1] - w / h) > _ASPECT_SLACK * (w / h):
            continue
        if best is None or size[0] * size[1] < best[1]:
            best = (blob, size[0] * size[1])
    return best[0] if best else None


def open_preview(main: Image.Image, blob: bytes, draft_to: int) -> Image.Image:
    """The preview decoded to RGB, drafted to ``draft_to`` and turned as the main image's EXIF says."""
    im = Image.open(io.BytesIO(blob))
    im.draft("RGB", (draft_to, draft_to))
    im = im.convert("RGB")
    try:
        orientation = main.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    method = _TRANSPOSE.get(orientation)
    return im.transpose(method) if method is not None else im


def decode_preview(im: Image.Image, data: bytes, min_side: int, draft_to: int | None) -> Image.Image | None:
    """``open_preview`` of ``preview_jpeg``; ``None`` when there is none or it does not decode."""
    blob = preview_jpeg(im, data, min_side)
    if blob is None:
        return None
    try:
        return open_preview(im, blob, draft_to or min_side)
    except Exception:  # an undecodable preview: the caller decodes the main image
        return None
