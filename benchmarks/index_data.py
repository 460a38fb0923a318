"""Benchmark inputs for ``index_bench``: real photos at camera size, photo trees, synthetic vectors.

The photos are the colour and grey photographs that ship with scikit-image (``skimage.data``;
``pip install scikit-image``, benchmark only), cropped to 4:3 and upscaled with bicubic to the
wanted size, with mild sensor-like noise so the JPEGs carry camera-like detail.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "camera")  # fmt: skip
CAMERA_SIZE = (4000, 3000)  # 12 MP
PHONE_THUMBNAIL = (512, 384)  # the EXIF thumbnail size of many phones; fits the 64 KB APP1


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def camera_jpeg(
    name: str, size: tuple[int, int] = CAMERA_SIZE, quality: int = 92, seed: int = 0,
    thumbnail: tuple[int, int] | None = None,
) -> bytes:
    """``skimage.data.<name>`` as a ``size`` JPEG, 4:3-cropped, bicubic-upscaled, noise sigma 2.

    ``thumbnail``: also store an EXIF thumbnail of that size (Lanczos, q85), as cameras do.
    """
    im = photo(name)
    w, h = im.size
    tw = min(w, h * size[0] // size[1])
    th = tw * size[1] // size[0]
    im = im.crop(((w - tw) // 2, (h - th) // 2, (w - tw) // 2 + tw, (h - th) // 2 + th))
    big = np.asarray(im.resize(size, Image.Resampling.BICUBIC), np.float32)
    big += np.random.default_rng(seed).normal(0.0, 2.0, big.shape).astype(np.float32)
    full = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))
    extra = {}
    if thumbnail is not None:
        small = io.BytesIO()
        full.resize(thumbnail, Image.Resampling.LANCZOS).save(small, "JPEG", quality=85)
        extra["exif"] = exif_with_thumbnail(small.getvalue())
    buf = io.BytesIO()
    full.save(buf, "JPEG", quality=quality, **extra)
    return buf.getvalue()


def exif_with_thumbnail(thumbnail: bytes, orientation: int = 1) -> bytes:
    """An EXIF block (for ``save(exif=...)``): IFD0 with Orientation, IFD1 holding ``thumbnail``.

    Little-endian TIFF: header (8 bytes), IFD0 (1 entry, 18 bytes), IFD1 (3 entries, 42 bytes),
    then the thumbnail's JPEG bytes at offset 68, as EXIF 2.3 section 4.5.4 lays it out.
    """
    def entry(tag: int, kind: int, value: int) -> bytes:
        return struct.pack("<HHLHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHLL", tag, kind, 1, value)

    ifd0 = struct.pack("<H", 1) + entry(0x0112, 3, orientation) + struct.pack("<L", 26)
    ifd1 = (struct.pack("<H", 3) + entry(0x0103, 3, 6) + entry(0x0201, 4, 68)
            + entry(0x0202, 4, len(thumbnail)) + struct.pack("<L", 0))
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<L", 8) + ifd0 + ifd1 + thumbnail


def with_mpf_preview(main: Image.Image, preview: Image.Image, quality: int = 90) -> bytes:
    """A JPEG of ``main`` with ``preview`` as an MPF "Large Thumbnail (VGA Equivalent)" image.

    Pillow writes MPF entries of type Undefined; the second entry's type is patched to 0x010001.
    """
    buf = io.BytesIO()
    main.save(buf, "MPO", save_all=True, append_images=[preview], quality=quality)
    data = buf.getvalue()
    entry = Image.open(io.BytesIO(data)).mpinfo[0xB002][1]
    plain = struct.pack("<LLL", 0, entry["Size"], entry["DataOffset"])
    assert data.count(plain) == 1, "cannot find the MP entry to patch"
    return data.replace(plain, struct.pack("<LLL", 0x010001, entry["Size"], entry["DataOffset"]))


def camera_tree(folder: Path, n: int, thumbnail: tuple[int, int] | None = None) -> list[Path]:
    """``n`` 12 MP JPEG files cycling through the photos (written once, reused).

    ``thumbnail``: each file carries an EXIF thumbnail of that size (use a folder of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    paths = []
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        path = folder / f"{i:05d}-{name}.jpg"
        if not path.exists():
            if name not in data:
                data[name] = camera_jpeg(name, thumbnail=thumbnail)
            path.write_bytes(data[name])
        paths.append(path)
    return paths


def perturbed_tree(folder: Path, n: int, size: tuple[int, int] = (1024, 768), seed: int = 0) -> list[Path]:
    """``n`` distinct JPEGs: the photos randomly cropped, flipped, tinted and resized to ``size``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [photo(p) for p in PHOTOS]
    paths = []
    for i in range(n):
        path = folder / f"{i // 1000:03d}" / f"IMG_{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        im = sources[i % len(sources)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tint = np.asarray(crop, np.float32) * rng.uniform(0.8, 1.2, 3)
        Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=88)
    return paths


def clustered_vectors(n: int, dim: int = 512, seed: int = 0, centres: int = 4096) -> np.ndarray:
    """Unit vectors in ``centres`` loose clusters (nearest-neighbour cosine ~0.6-0.8, as photo
    embeddings are): harder for a graph index than one tight cluster, easier than pure noise."""
    centre = np.random.default_rng(12345).standard_normal((centres, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    rng = np.random.default_rng(seed)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        x = centre[rng.integers(0, centres, m)] + 1.2 * rng.standard_normal((m, dim)).astype(np.float32)
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
