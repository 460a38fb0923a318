"""Walking a photo tree: content sniffing, skipped folders, excludes, symlinks (no model needed)."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from edgeclip.errors import InputError
from edgeclip.index.walk import check_roots, image_format, walk


def _encoded(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_formats_are_recognised_by_content_not_name(fmt, tmp_path):
    data = _encoded(fmt)
    assert image_format(data[:32], "no-extension") == fmt
    assert image_format(data[:32], "holiday.txt") == fmt  # a misleading name changes nothing


def test_avif_and_heic_follow_what_this_install_decodes():
    from edgeclip.index.walk import optional_formats

    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00"
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00"
    assert image_format(avif) == ("AVIF" if "AVIF" in optional_formats() else None)
    assert image_format(heic) == ("HEIF" if "HEIF" in optional_formats() else None)


def test_non_images_and_camera_raw_are_not_images():
    assert image_format(b"hello world, not an image") is None
    assert image_format(b"") is None
    assert image_format(b"II*\x00" + b"\x00" * 28, "IMG_0001.CR2") is None  # raw: a TIFF preview
    assert image_format(b"II*\x00" + b"\x00" * 28, "scan.tif") == "TIFF"


def _touch_image(path, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encoded(fmt))


def test_walk_skips_hidden_system_and_excluded_folders(tmp_path):
    for rel in ["a.png", "sub/b.png", ".git/c.png", "@eaDir/d.png", "node_modules/e.png",
                ".hidden.png", "tmp/f.png", "sub/skip.png"]:  # fmt: skip
        _touch_image(tmp_path / rel)
    found = sorted(os.path.relpath(e.path, tmp_path) for e in walk([str(tmp_path)], ["tmp", "skip.*"]))
    assert found == ["a.png", os.path.join("sub", "b.png")]


def test_relative_excludes_never_look_above_the_indexed_folder(tmp_path):
    # a library kept under a folder named tmp: '*/tmp/*' once matched every absolute path here
    root = tmp_path / "tmp" / "photos"
    for rel in ["a.png", "tmp/b.png", "sub/tmp/c.png", "sub/d.png"]:
        _touch_image(root / rel)
    found = sorted(os.path.relpath(e.path, root) for e in walk([str(root)], ["*/tmp/*"]))
    assert found == ["a.png", os.path.join("sub", "d.png")]  # tmp/ right under it is caught too
    # a glob that starts with / is matched against the absolute path
    absolute = sorted(os.path.relpath(e.path, root) for e in walk([str(root)], [f"{root}/sub/*"]))
    assert absolute == ["a.png", os.path.join("tmp", "b.png")]


def test_symlink_loop_ends_and_linked_files_are_seen_once(tmp_path):
    root = tmp_path / "photos"
    _touch_image(root / "a" / "x.png")
    os.symlink("..", root / "a" / "loop")  # a -> photos: a loop
    os.symlink(root / "a", root / "alias")  # the same folder under a second name
    os.symlink(root / "a" / "x.png", root / "link.png")  # a link to a file inside the tree
    outside = tmp_path / "outside.png"
    _touch_image(outside)
    os.symlink(outside, root / "from-outside.png")  # a link out of the tree is followed
    os.symlink(tmp_path / "nowhere.png", root / "dangling.png")
    found = sorted(os.path.relpath(e.path, root) for e in walk([str(root)]))
    assert found == [os.path.join("a", "x.png"), "from-outside.png"]


def test_a_folder_link_inside_the_roots_is_skipped_and_one_out_of_them_followed(tmp_path):
    root, other, outside = tmp_path / "photos", tmp_path / "other", tmp_path / "outside"
    _touch_image(root / "2024" / "x.png")
    _touch_image(other / "y.png")
    _touch_image(outside / "z.png")
    os.symlink(root / "2024", root / "0-latest")  # sorts before the real folder
    os.symlink(other, root / "0-other")  # the second root, reached through the first
    os.symlink(outside, root / "from-outside")  # out of every root: followed
    expected = sorted([str(root / "2024" / "x.png"), str(other / "y.png"),
                       str(root / "from-outside" / "z.png")])  # fmt: skip
    for roots in ([root, other], [other, root]):
        assert sorted(e.path for e in walk([str(r) for r in roots])) == expected, roots
    # walked alone, the first root still reaches the other folder through its link
    assert str(root / "0-other" / "y.png") in {e.path for e in walk([str(root)])}


def test_walk_reports_folders_it_cannot_list(tmp_path):
    _touch_image(tmp_path / "ok.png")
    errors: list[str] = []
    found = list(walk([str(tmp_path / "ok.png"), str(tmp_path)], errors=errors))
    assert [os.path.basename(e.path) for e in found] == ["ok.png"]
    assert errors and "ok.png" in errors[0]


def test_check_roots_names_the_bad_input(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        check_roots([tmp_path / "missing"])
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(InputError, match="it is a file, not a directory"):
        check_roots([tmp_path / "f.png"])
    assert check_roots([tmp_path]) == [str(tmp_path)]


def test_importing_the_package_loads_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, edgeclip, edgeclip.index; heavy = {'numpy', 'PIL', 'usearch', 'tqdm', "
            "'onnxruntime', 'torch'} & set(sys.modules); assert not heavy, heavy")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
