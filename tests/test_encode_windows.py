"""encode_image on long lists: window by window, so memory holds two windows of pixels, not the
whole list; a bad image in any window keeps every good row; rows equal encoding alone."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

import edgeclip
from edgeclip.errors import BatchError
from edgeclip.preprocess import WINDOW


@pytest.fixture(scope="module")
def model(micro_bundle):
    return edgeclip.load(micro_bundle, backend="onnx", precision="fp32")


def _photos(folder, n: int) -> list[str]:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        path = folder / f"p{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_bad_images_in_later_windows_keep_every_good_row_in_place(model, tmp_path):
    paths = _photos(tmp_path, 2 * WINDOW + 5)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bad_at = [0, WINDOW + 3, 2 * WINDOW + 4]
    for i in bad_at:
        paths[i] = str(broken)
    with pytest.raises(BatchError) as info:
        model.encode_image(paths)
    err = info.value
    assert sorted(err.failures) == bad_at and all("broken.jpg" in why for why in err.failures.values())
    good = [i for i in range(len(paths)) if i not in bad_at]
    assert np.isnan(err.results[bad_at]).all() and np.isfinite(err.results[good]).all()
    for i in (1, WINDOW - 1, WINDOW, 2 * WINDOW + 3):
        np.testing.assert_allclose(err.results[i], model.encode_image(paths[i])[0], atol=1e-5)


def test_window_boundaries_do_not_change_rows(model, tmp_path):
    paths = _photos(tmp_path, WINDOW + 7)
    whole = model.encode_image(paths)
    by_three = model.encode_image(paths, batch_size=3)
    pixels, good, failures = model.preprocessor(paths)  # the whole list in one array
    assert good == list(range(len(paths))) and not failures
    np.testing.assert_allclose(whole, model.encode_pixels(pixels), atol=1e-5)
    np.testing.assert_allclose(whole, by_three, atol=1e-5)


def test_pixel_memory_is_two_windows_not_the_whole_list(model, tmp_path):
    n = 6 * WINDOW
    paths = _photos(tmp_path, n)
    per_image = 3 * model.preprocessor.image_size**2 * 4  # float32 pixels
    model.encode_image(paths[:2])  # sessions built outside the measurement
    tracemalloc.start()
    try:
        vectors = model.encode_image(paths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert vectors.shape == (n, model.embed_dim) and np.isfinite(vectors).all()
    # numpy reports its buffers to tracemalloc: the whole list at once would be n images
    assert peak < 3 * WINDOW * per_image < n * per_image, (peak, per_image)


def test_a_generator_of_images_is_many_images_and_a_file_object_is_one(model, tmp_path):
    paths = _photos(tmp_path, 5)
    want = model.encode_image(paths)
    # before: a generator was taken for one image and refused ("object of type generator")
    np.testing.assert_allclose(model.encode_image(p for p in paths), want, atol=1e-6)
    tops = model.classify(iter(paths), ["a", "b"], top_k=2)
    assert len(tops) == 5 and tops == model.classify(paths, ["a", "b"], top_k=2)
    assert model.similarity((p for p in paths), iter(["a", "b"])).shape == (5, 2)
    with open(paths[0], "rb") as fh:  # iterable (by lines), yet one image
        np.testing.assert_allclose(model.encode_image(fh), want[:1], atol=1e-6)
    with pytest.raises(edgeclip.InputError, match="got no images"):
        model.encode_image(iter([]))
