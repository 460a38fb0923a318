"""load_image: every accepted input type and mode, and every refusal, on real encoded files."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from edgeclip.errors import InputError
from edgeclip.images import load_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A hand-written PNG (Pillow cannot write 16-bit RGB, nor lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw_rows))
        + _png_chunk(b"IEND", b"")
    )


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(w: int = 64, h: int = 48) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def _close(px, want, tol=6):
    assert all(abs(int(a) - int(b)) <= tol for a, b in zip(px, want)), (px, want)


# -- accepted input types --------------------------------------------------------------------


def test_path_str_and_pathlib(tmp_path: Path):
    p = tmp_path / "a.png"
    _photo().save(p)
    for x in (str(p), p):
        im = load_image(x)
        assert im.mode == "RGB" and im.size == (64, 48)
        assert np.array_equal(np.asarray(im), np.asarray(_photo()))


def test_bytes_bytearray_memoryview_and_file_objects(tmp_path: Path):
    data = _encode(_photo(), "PNG")
    want = np.asarray(_photo())
    for x in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert np.array_equal(np.asarray(load_image(x)), want)
    p = tmp_path / "b.png"
    p.write_bytes(data)
    with open(p, "rb") as f:
        assert np.array_equal(np.asarray(load_image(f)), want)


def test_pil_image_is_converted_not_mutated():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = load_image(rgba)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    assert rgba.mode == "RGBA" and rgba.getpixel((0, 0)) == (255, 0, 0, 0)
    rgb = _photo()
    assert load_image(rgb) is rgb  # already RGB: no copy


def test_numpy_arrays_of_each_accepted_layout_and_dtype():
    rgb = np.asarray(_photo())
    assert np.array_equal(np.asarray(load_image(rgb)), rgb)
    gray = rgb[..., 0]
    assert np.array_equal(np.asarray(load_image(gray))[..., 1], gray)
    assert np.array_equal(np.asarray(load_image(gray[..., None]))[..., 2], gray)
    # uint16 is scaled by 257 (65535 -> 255, 257*k -> k).
    assert np.array_equal(np.asarray(load_image(rgb.astype(np.uint16) * 257)), rgb)
    # float in [0, 1] is scaled by 255 with rounding.
    assert np.array_equal(np.asarray(load_image(rgb.astype(np.float32) / 255)), rgb)
    assert np.array_equal(np.asarray(load_image(rgb.astype(np.float64) / 255)), rgb)
    # RGBA: alpha 0 -> white, alpha 255 -> the colour.
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    out = np.asarray(load_image(rgba))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 1]) == (255, 255, 255)
    # non-contiguous views are fine
    assert np.array_equal(np.asarray(load_image(rgb[::2, ::-1])), rgb[::2, ::-1])


# -- modes -----------------------------------------------------------------------------------


def test_exif_orientation_6_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored left becomes displayed top
    out = load_image(_encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    _close(out.getpixel((10, 3)), (255, 0, 0))
    _close(out.getpixel((10, 36)), (0, 0, 255))
    # Without the tag the same pixels stay as stored.
    plain = load_image(_encode(im, "JPEG", quality=95))
    assert plain.size == (40, 20)


def test_grayscale_palette_and_bilevel_files():
    gray = Image.new("L", (4, 4), 77)
    assert load_image(_encode(gray, "PNG")).getpixel((1, 1)) == (77, 77, 77)
    pal = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = load_image(_encode(pal, "PNG"))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(pal.convert("RGB")))
    bilevel = Image.new("1", (4, 4), 1)
    assert load_image(_encode(bilevel, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_composites_on_white():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([200, 10, 10] + [10, 200, 10] * 255)
    pal.putpixel((0, 0), 1)
    for fmt in ("PNG", "GIF"):
        out = load_image(_encode(pal, fmt, transparency=0))
        assert out.getpixel((1, 1)) == (255, 255, 255), fmt  # index 0 is transparent
        assert out.getpixel((0, 0)) == (10, 200, 10), fmt


def test_rgba_la_pa_composite_on_white():
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    out = load_image(_encode(rgba, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 0)
    assert out.getpixel((2, 0))[0] in (126, 127, 128)  # half black over white
    la = Image.new("LA", (2, 2), (0, 0))
    assert load_image(_encode(la, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    pa = Image.new("PA", (2, 2), (0, 0))
    pa.putpalette([0, 0, 0] * 256)
    assert load_image(pa).getpixel((0, 0)) == (255, 255, 255)


def test_16bit_grayscale_png_is_scaled_not_clipped():
    a = np.linspace(0, 65535, 64 * 4).astype(np.uint16).reshape(4, 64)
    data = _encode(Image.fromarray(a), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_image(data))[..., 0].astype(int)
    assert np.abs(out - np.rint(a / 257)).max() <= 1
    assert out.max() == 255 and out[0, 32] not in (0, 255)  # a mid-grey, not clipped


def test_16bit_rgb_png():
    h, w = 3, 5
    a = np.random.default_rng(0).integers(0, 65536, (h, w, 3)).astype(">u2")
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))
    out = np.asarray(load_image(_png(w, h, 16, 2, raw))).astype(int)
    assert np.abs(out - np.rint(a.astype(int) / 257)).max() <= 1


def test_wide_and_float_pil_modes():
    i32 = Image.fromarray(np.full((2, 2), 40000, np.int32), "I")
    assert load_image(i32).getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257
    small = Image.new("L", (2, 2), 90).convert("I")  # 8-bit data held in mode I
    assert load_image(small).getpixel((0, 0)) == (90, 90, 90)
    f01 = Image.fromarray(np.full((2, 2), 0.5, np.float32), "F")
    assert load_image(f01).getpixel((0, 0)) == (128, 128, 128)
    f255 = Image.fromarray(np.full((2, 2), 200.0, np.float32), "F")
    assert load_image(f255).getpixel((0, 0)) == (200, 200, 200)


def test_cmyk_jpeg_and_ycbcr():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    data = _encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    _close(load_image(data).getpixel((8, 8)), (255, 0, 0))
    ycc = Image.new("RGB", (4, 4), (30, 140, 220)).convert("YCbCr")
    _close(load_image(ycc).getpixel((1, 1)), (30, 140, 220), tol=3)


# -- refusals --------------------------------------------------------------------------------


def _refused(x, *fragments: str, **kw) -> str:
    with pytest.raises(InputError) as ei:
        load_image(x, **kw)
    msg = str(ei.value)
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def test_missing_file_directory_zero_bytes_and_non_image(tmp_path: Path):
    _refused(tmp_path / "nope.jpg", str(tmp_path / "nope.jpg"), "no such file")
    _refused(str(tmp_path), str(tmp_path), "directory")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    _refused(empty, str(empty), "empty")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n" * 10)
    _refused(text, str(text), "not an image")
    _refused(b"", "bytes input (0 bytes)")
    _refused(b"hello world", "bytes input (11 bytes)", "not an image")
    _refused("https://example.com/cat.jpg", "does not download URLs")


def test_heic_gets_a_hint():
    fake_heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40
    _refused(fake_heic, "bytes input (52 bytes)", "pillow-heif")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_refused(tmp_path: Path, fmt: str):
    noise = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    cut = data[: len(data) // 2]
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    _refused(p, str(p), "decoding failed")
    _refused(cut, f"bytes input ({len(cut)} bytes)")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # we never flip the global switch


def test_decompression_bombs_are_refused_before_decoding_without_global_side_effects():
    before = Image.MAX_IMAGE_PIXELS
    raw = b"\x00" * 10  # far too little pixel data: only the header is ever read
    huge = _png(100_000, 100_000, 8, 2, raw)  # 10 Gpx: above Pillow's hard limit too
    big = _png(10_000, 10_000, 8, 2, raw)  # 100 Mpx: above the default 89.5 Mpx limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may leak to the user
        _refused(huge, f"bytes input ({len(huge)} bytes)", "10000000000 pixels", "bomb")
        _refused(huge, "MAX_IMAGE_PIXELS", max_pixels=None)
        _refused(big, "10000x10000", "exceeds the limit of 89,478,485")
    assert Image.MAX_IMAGE_PIXELS == before
    # The limit is configurable, and applies to lazily opened PIL images too.
    _refused(_encode(_photo(), "PNG"), "64x48", max_pixels=1000)
    _refused(Image.open(io.BytesIO(_encode(_photo(), "PNG"))), "PIL image", max_pixels=1000)
    assert load_image(_encode(_photo(), "PNG"), max_pixels=64 * 48).size == (64, 48)


def test_bad_arrays_are_refused_with_their_shape():
    _refused(np.zeros((3, 32, 32), np.uint8), "array of shape (3, 32, 32)", "transpose(1, 2, 0)")
    _refused(np.zeros((2, 8, 8, 3), np.uint8), "array of shape (2, 8, 8, 3)", "batch")
    _refused(np.zeros((8, 8, 2), np.uint8), "array of shape (8, 8, 2)")
    _refused(np.zeros((8,), np.uint8), "array of shape (8,)")
    _refused(np.zeros((0, 8, 3), np.uint8), "array of shape (0, 8, 3)", "no pixels")
    _refused(np.zeros((8, 8, 3), np.int64), "dtype int64", "uint8")
    _refused(np.zeros((8, 8, 3), bool), "dtype bool")
    _refused(np.full((8, 8, 3), 2.0, np.float32), "[0, 1]", "got [2, 2]")
    _refused(np.full((8, 8, 3), np.nan, np.float32), "NaN")


def test_unsupported_types_and_text_streams():
    msg = _refused(12345, "builtins.int", "accepts")
    assert "numpy array" in msg and "PIL.Image.Image" in msg
    _refused([1, 2, 3], "builtins.list")
    _refused(io.StringIO("abc"), "text stream", "'rb'")
