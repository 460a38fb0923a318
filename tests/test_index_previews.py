"""Embedded JPEG previews (``edgeclip/index/previews.py``) on real JPEG files.

Each file's preview is painted a different colour from its main image, so the decoded pixels
show which of the two was used.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.index_data import exif_with_thumbnail, with_mpf_preview
from edgeclip.index import Index
from edgeclip.index.pipeline import decode

BLUE, RED = (20, 40, 220), (220, 30, 30)


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _with_thumbnail(main: tuple[int, int], thumb: tuple[int, int], orientation: int = 1) -> bytes:
    """A blue ``main``-sized JPEG holding a red ``thumb``-sized EXIF thumbnail."""
    buf = io.BytesIO()
    exif = exif_with_thumbnail(_jpeg(RED, thumb), orientation)
    Image.new("RGB", main, BLUE).save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def _colour(im: Image.Image) -> tuple[int, ...]:
    return tuple(int(round(c)) for c in np.asarray(im, np.float32).reshape(-1, 3).mean(0))


def _is(colour: tuple[int, ...], want: tuple[int, int, int]) -> bool:
    return max(abs(a - b) for a, b in zip(colour, want)) < 12


def test_a_large_enough_exif_thumbnail_is_decoded_instead_of_the_main_image():
    data = _with_thumbnail((1600, 1200), (512, 384))
    used = decode(data, "JPEG", draft_to=224, preview_to=224)
    assert used.size == (512, 384) and _is(_colour(used), RED)
    main = decode(data, "JPEG", draft_to=224)  # previews off: the main image, drafted to 1/4
    assert main.size == (400, 300) and _is(_colour(main), BLUE)


def test_the_main_images_orientation_turns_the_preview_too():
    data = _with_thumbnail((1600, 1200), (512, 384), orientation=6)
    assert decode(data, "JPEG", draft_to=224, preview_to=224).size == (384, 512)
    assert decode(data, "JPEG", draft_to=224).size == (300, 400)


def test_small_or_misshapen_thumbnails_are_not_used():
    for thumb in ((160, 120), (512, 288)):  # below 224 px; 16:9 on a 4:3 photo
        im = decode(_with_thumbnail((1600, 1200), thumb), "JPEG", draft_to=224, preview_to=224)
        assert _is(_colour(im), BLUE), thumb


def test_a_broken_thumbnail_falls_back_to_the_main_image():
    good = _with_thumbnail((1600, 1200), (512, 384))
    # Same length, so the EXIF offsets stay valid but the bytes behind them are garbage.
    start = good.index(b"\xff\xd8", 2)
    garbage = good[:start] + b"\xff\xd8" + bytes(range(256)) * 4 + good[start + 2 + 1024 :]
    assert len(garbage) == len(good)
    assert _is(_colour(decode(garbage, "JPEG", draft_to=224, preview_to=224)), BLUE)
    # An IFD1 offset pointing past the end of the block: no preview, no error.
    bad_offset = good.replace(struct.pack("<HHLL", 0x0201, 4, 1, 68), struct.pack("<HHLL", 0x0201, 4, 1, 10**6), 1)
    assert _is(_colour(decode(bad_offset, "JPEG", draft_to=224, preview_to=224)), BLUE)


def test_mpf_large_thumbnails_are_used_and_other_mpf_images_are_not():
    main, preview = Image.new("RGB", (1600, 1200), BLUE), Image.new("RGB", (640, 480), RED)
    data = with_mpf_preview(main, preview)
    im = decode(data, "MPO", draft_to=224, preview_to=224)
    assert im.size == (320, 240) and _is(_colour(im), RED)  # the preview, itself drafted by 1/2
    # Pillow's own MPO output marks the second image Undefined (as a stereo pair or an HDR
    # gain map would be marked something else): never a preview, and the main image is drafted.
    buf = io.BytesIO()
    main.save(buf, "MPO", save_all=True, append_images=[preview], quality=90)
    im = decode(buf.getvalue(), "MPO", draft_to=224, preview_to=224)
    assert im.size == (400, 300) and _is(_colour(im), BLUE)


def test_index_with_previews_stores_the_previews_vector(tmp_path: Path, micro_bundle):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "IMG_0001.jpg").write_bytes(_with_thumbnail((1600, 1200), (512, 384)))  # in the head
    mpf = with_mpf_preview(Image.new("RGB", (1600, 1200), BLUE), Image.new("RGB", (640, 480), RED))
    (folder / "IMG_0002.jpg").write_bytes(mpf)  # after the main image: needs the whole file
    stored = {}
    for previews in (False, True):
        with Index(tmp_path / f"lib-{previews}.db", micro_bundle, previews=previews) as ix:
            assert ix.update([folder]).embedded == 2
            matrix = np.asarray(ix.vectors.matrix(ix.committed_slots()), np.float32)
            stored[previews] = {Path(r.path).name: matrix[r.slot] for r in ix.store.rows("ok")}
            model = ix.model
    blue, red = model.encode_image([Image.new("RGB", (400, 300), BLUE), Image.new("RGB", (512, 384), RED)],
                                   invariant=True)  # fmt: skip
    assert float(blue @ red) < 0.99  # the two are told apart
    for previews, want in ((False, blue), (True, red)):
        for name, vec in stored[previews].items():
            assert float(vec @ want) / np.linalg.norm(vec) > 0.999, (previews, name)


def test_cli_previews_flag_indexes_the_preview(tmp_path: Path, micro_bundle):
    from edgeclip.index.cli import main as cli

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "IMG_0001.jpg").write_bytes(_with_thumbnail((1600, 1200), (512, 384)))
    db = tmp_path / "cli.db"
    assert cli(["index", str(folder), "--db", str(db), "--model", str(micro_bundle), "--previews", "--quiet"]) == 0
    with Index(db, micro_bundle, readonly=True) as ix:
        vec = np.asarray(ix.vectors.matrix(ix.committed_slots()), np.float32)[0]
        red = ix.model.encode_image([Image.new("RGB", (512, 384), RED)], invariant=True)[0]
    assert float(vec @ red) / np.linalg.norm(vec) > 0.999
