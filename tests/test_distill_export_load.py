"""A distilled student goes through `edgeclip convert` and `edgeclip.load` and embeds what it trained on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from edgeclip.distill.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# (w, h): aspect ratios where rounding and truncating the resized long side differ (57x45 at
# 32 px: 40.5 -> 41 or 40), and ones where they agree
SIZES = [(57, 45), (64, 50), (50, 40), (71, 55), (33, 90), (32, 32)]


def test_a_student_trained_on_photos_converts_loads_and_embeds_as_in_training(tmp_path, teacher_dir):
    from PIL import Image
    from transformers import CLIPModel

    import edgeclip
    from edgeclip.distill.datasets import decode_image
    from edgeclip.distill.evaluate import to_pixels
    from edgeclip.distill.students import encode_image, encode_text
    from edgeclip.tokenizer import tokenize

    rng = np.random.default_rng(0)
    rows = ["image,caption"]
    for k, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
        rows.append(f"{k}.png,a picture number {k}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out, bundle = tmp_path / "student", tmp_path / "bundle"
    argv = ["distill", "--teacher", str(teacher_dir), "--student", "micro", "--data", str(tmp_path / "pairs.csv"),
            "--steps", "2", "--batch-size", "6", "--no-progress", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    conv = subprocess.run([sys.executable, "-m", "edgeclip", "convert", str(out), "-o", str(bundle), "--backend",
                           "onnx", "--precision", "fp32"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert conv.returncode == 0, conv.stderr[-2000:]

    model = CLIPModel.from_pretrained(str(out)).eval()
    loaded = edgeclip.load(str(bundle))
    paths = [tmp_path / f"{k}.png" for k in range(len(SIZES))]
    # the pixels training gave the student (decode_image) against what the bundle embeds
    pixels = to_pixels(np.stack([decode_image(p, 32) for p in paths]))
    texts = ["a picture number 3", "a red square", "x"]
    with torch.no_grad():
        want_img = torch.nn.functional.normalize(encode_image(model, pixels), dim=-1).numpy()
        ids = torch.from_numpy(tokenize(texts, model.config.text_config.max_position_embeddings))
        want_txt = torch.nn.functional.normalize(encode_text(model, ids), dim=-1).numpy()
    got_img = np.asarray(loaded.encode_image([str(p) for p in paths]))
    got_txt = np.asarray(loaded.encode_text(texts))
    # before: 0.981 and 0.989 on the 57x45 and 64x50 images (a pixel's shift in the crop)
    np.testing.assert_allclose((got_img * want_img).sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose((got_txt * want_txt).sum(1), 1.0, atol=1e-4)
