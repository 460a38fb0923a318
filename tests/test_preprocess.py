"""Preprocessor: config validation, HF config mapping, batches with bad items, and numeric
parity with transformers' CLIPImageProcessor (PIL backend) on real images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.errors import InputError
from edgeclip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessor, hf_to_cfg

CLIP_HF_CONFIG = {  # openai/clip-vit-base-patch32's preprocessor_config.json
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": list(OPENAI_CLIP_MEAN),
    "image_std": list(OPENAI_CLIP_STD),
    "resample": 3,
    "size": 224,
}


def _synthetic_photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients + blobs + noise: photo-like statistics without any download."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for _ in range(3):
        fx, fy, ph = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.28)]
        c = 0.5 + 0.35 * np.sin(fx * 6.28 * x / w + ph) * np.cos(fy * 6.28 * y / h)
        chans.append(c)
    a = np.stack(chans, -1) * 255 + rng.normal(0, 12, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def _photos() -> list[np.ndarray]:
    try:
        import skimage.data as d
    except ImportError:
        d = None
    if d is not None:
        gray = d.camera()
        imgs = [d.astronaut(), d.coffee(), d.chelsea(), d.rocket(), np.stack([gray] * 3, -1)]
    else:
        imgs = [
            _synthetic_photo(h, w, i)
            for i, (h, w) in enumerate([(512, 512), (400, 600), (300, 451), (427, 640), (512, 384)])
        ]
    # plus tiny, thin and odd-sized ones
    imgs += [
        _synthetic_photo(h, w, 10 + i)
        for i, (h, w) in enumerate([(1, 1), (13, 7), (225, 224), (50, 900)])
    ]
    return imgs


@pytest.fixture(scope="module")
def hf_processor_cls():
    transformers = pytest.importorskip("transformers")
    # transformers >= 5 has a PIL backend class; before that CLIPImageProcessor was PIL-based.
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    return cls or transformers.CLIPImageProcessor


def _hf(cls, images, **kw) -> np.ndarray:
    out = cls(**kw)(images=images, return_tensors="np")["pixel_values"]
    return np.asarray(out, np.float32)


# -- config ----------------------------------------------------------------------------------


def test_defaults_are_clip():
    p = Preprocessor()
    assert p.cfg["image_size"] == 224 and p.cfg["resize"] == "shortest"
    assert p.cfg["interpolation"] == "bicubic" and p.cfg["crop"] == "center"
    assert p.cfg["mean"] == list(OPENAI_CLIP_MEAN) and p.cfg["std"] == list(OPENAI_CLIP_STD)
    assert Preprocessor({}).cfg == p.cfg == Preprocessor(None).cfg


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        ({"image_sz": 224}, "unknown key"),
        ({"image_size": 0}, "image_size=0"),
        ({"image_size": 22.5}, "image_size=22.5"),
        ({"image_size": True}, "image_size=True"),
        ({"resize": "longest"}, "resize='longest'"),
        ({"interpolation": "lanczos"}, "interpolation='lanczos'"),
        ({"crop": "random"}, "crop='random'"),
        ({"crop": "none"}, "non-square"),
        ({"mean": [0.5, 0.5]}, "mean="),
        ({"std": [0.5, 0.0, 0.5]}, "positive"),
        ({"std": "abc"}, "std="),
        ({"resize": "squash", "crop": "none", "resize_size": 256}, "resize_size"),
    ],
)
def test_bad_configs_are_refused(cfg, fragment):
    with pytest.raises(InputError, match="Preprocessor config") as ei:
        Preprocessor(cfg)
    assert fragment in str(ei.value)
    with pytest.raises(InputError):
        Preprocessor("224")  # type: ignore[arg-type]


def test_from_hf_maps_clip_configs():
    assert Preprocessor.from_hf(CLIP_HF_CONFIG).cfg == Preprocessor().cfg
    modern = {
        "size": {"shortest_edge": 256},
        "crop_size": {"height": 224, "width": 224},
        "resample": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    cfg = hf_to_cfg(modern)
    assert cfg == {
        "interpolation": "bilinear",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "resize": "shortest",
        "crop": "center",
        "image_size": 224,
        "resize_size": 256,
    }
    squash = {"size": {"height": 256, "width": 256}, "do_center_crop": False}
    assert hf_to_cfg(squash)["resize"] == "squash"
    with pytest.raises(InputError, match="resample=1"):
        hf_to_cfg({**CLIP_HF_CONFIG, "resample": 1})
    with pytest.raises(InputError, match="do_normalize"):
        hf_to_cfg({**CLIP_HF_CONFIG, "do_normalize": False})


# -- outputs ---------------------------------------------------------------------------------


def test_one_returns_normalised_chw_float32():
    p = Preprocessor()
    x = p.one(np.full((30, 40, 3), (0, 128, 255), np.uint8))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    want = (np.array([0, 128, 255]) / 255 - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    assert np.allclose(x.reshape(3, -1).mean(1), want, atol=1e-5)
    assert np.allclose(x.reshape(3, -1).std(1), 0, atol=1e-6)
    with pytest.raises(InputError, match="bytes input"):
        p.one(b"not an image")


def test_batch_keeps_good_images_with_their_indices(tmp_path: Path):
    good = tmp_path / "good.png"
    Image.fromarray(_synthetic_photo(60, 80, 0)).save(good)
    missing = tmp_path / "missing.jpg"
    p = Preprocessor({"image_size": 32})
    arr = np.asarray(Image.open(good))
    batch = [good, missing, arr, b"\x00junk", str(good)]
    x, idx, failures = p(batch)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    assert idx == [0, 2, 4]
    assert set(failures) == {1, 3}
    assert str(missing) in failures[1] and "bytes input (5 bytes)" in failures[3]
    for row, i in enumerate(idx):
        assert np.array_equal(x[row], p.one(batch[i]))
    # all bad: an empty (0, 3, S, S) array, never an exception
    x, idx, failures = p([missing, b""])
    assert x.shape == (0, 3, 32, 32) and idx == [] and len(failures) == 2
    assert p([])[0].shape == (0, 3, 32, 32)


def test_threaded_and_serial_batches_agree(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    batch = [_synthetic_photo(40 + 9 * i, 70 - 5 * i, i) for i in range(7)]
    batch[2] = bad
    batch[5] = b""
    serial = Preprocessor({"image_size": 24}, threads=1)(batch)
    threaded = Preprocessor({"image_size": 24}, threads=3)(batch)
    assert np.array_equal(serial[0], threaded[0])
    assert serial[1] == threaded[1] == [0, 1, 3, 4, 6]
    assert serial[2] == threaded[2] and set(serial[2]) == {2, 5}
    # one lazily decoded PIL image listed twice (it must not be decoded by two threads at once)
    lazy = Image.open(io.BytesIO(_png_bytes(Image.fromarray(batch[0]))))
    x, idx, _ = Preprocessor({"image_size": 24}, threads=3)([lazy, batch[1], lazy])
    assert idx == [0, 1, 2] and np.array_equal(x[0], x[2]) and np.array_equal(x[0], serial[0][0])
    for bad_threads in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="threads"):
            Preprocessor(threads=bad_threads)


def test_batch_argument_forms():
    p = Preprocessor({"image_size": 16})
    stack = np.stack([_synthetic_photo(20, 30, i) for i in range(3)])
    x, idx, failures = p(stack)  # an (N, H, W, C) array is a batch
    assert x.shape == (3, 3, 16, 16) and idx == [0, 1, 2] and not failures
    x2, _, _ = p(iter(list(stack)))  # any iterable
    assert np.array_equal(x, x2)
    for single in ("a.jpg", b"bytes", stack[0], Image.fromarray(stack[0])):
        with pytest.raises(InputError, match=r"\.one\(image\)"):
            p(single)


def test_squash_resizes_whole_image_without_crop():
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, 40:] = 255  # left black, right white: squash keeps both, a centre crop would too
    p = Preprocessor({"image_size": 20, "resize": "squash", "crop": "none"})
    x = p.one(a)
    assert x.shape == (3, 20, 20)
    assert x[0, :, 0].max() < 0 and x[0, :, -1].min() > 0
    want = np.asarray(Image.fromarray(a).resize((20, 20), Image.Resampling.BICUBIC))
    lut = (want.astype(np.float32) / 255 - np.float32(OPENAI_CLIP_MEAN[0])) / np.float32(
        OPENAI_CLIP_STD[0]
    )
    assert np.allclose(x[0], lut[..., 0], atol=1e-6)


# -- parity with transformers ----------------------------------------------------------------


def test_parity_with_clip_image_processor(hf_processor_cls):
    p = Preprocessor()
    worst = 0.0
    for a in _photos():
        im = Image.fromarray(a)
        ours = p.one(io.BytesIO(_png_bytes(im)))  # through the file-loading path
        ref = _hf(hf_processor_cls, im)[0]
        assert ours.shape == ref.shape == (3, 224, 224)
        worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst <= 1e-2, worst


def test_parity_with_other_configs(hf_processor_cls):
    cases = [
        ({"resample": 2}, {"interpolation": "bilinear"}),
        (
            {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}},
            {"resize_size": 256},
        ),
        (  # crop larger than the resized image: transformers zero-pads
            {"size": {"shortest_edge": 200}, "crop_size": {"height": 224, "width": 224}},
            {"resize_size": 200},
        ),
        (
            {"size": {"height": 160, "width": 160}, "do_center_crop": False},
            {"image_size": 160, "resize": "squash", "crop": "none"},
        ),
    ]
    imgs = [
        Image.fromarray(_synthetic_photo(h, w, i))
        for i, (h, w) in enumerate([(300, 451), (512, 300)])
    ]
    for hf_kw, ours_cfg in cases:
        p = Preprocessor(ours_cfg)
        assert p.cfg == Preprocessor(hf_to_cfg({**CLIP_HF_CONFIG, **hf_kw})).cfg
        ref = _hf(hf_processor_cls, imgs, **hf_kw)
        x, idx, failures = p(imgs)
        assert idx == [0, 1] and not failures
        assert np.abs(x - ref).max() <= 1e-2, (hf_kw, np.abs(x - ref).max())


def test_extreme_aspect_ratio_stays_close_to_reference(hf_processor_cls):
    # 1:100 strips take the windowed-resample path; they must stay close to transformers.
    a = _synthetic_photo(4000, 40, 7)
    ours = Preprocessor().one(a)
    ref = _hf(hf_processor_cls, Image.fromarray(a))[0]
    assert np.abs(ours - ref).max() <= 0.1


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
