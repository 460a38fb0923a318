"""Checkpoint → edgeclip bundle (ONNX fp32), gated on parity with torch fp32, written atomically.

``convert(checkpoint, out_dir)`` loads the checkpoint, exports both towers into a hidden staging
directory next to ``out_dir``, measures the ONNX Runtime graphs against transformers'
``get_image_features``/``get_text_features`` on synthetic pictures and real captions, refuses
(raises, leaves nothing behind) when a cosine falls under ``min_cosine``, then writes the
tokenizer, the manifest with every file's sha256, and renames the staging directory into place.
A conversion that dies at any point leaves at most a hidden ``.NAME.partial-*`` directory, never
a bundle that loads.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bundle import sha256_file, write_manifest
from edgeclip.errors import InputError, IntegrityError

__all__ = ["convert", "ParityError", "MIN_COSINE", "parity_inputs", "measure_parity"]

MIN_COSINE = 0.9999
VARIANT = "onnx-fp32"
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"

CAPTIONS = (
    "a photo of a cat",
    "a photo of a dog",
    "a diagram of a bridge",
    "a red car parked on a street at night",
    "two people playing chess in a park",
    "a bowl of ramen with an egg",
    "an astronaut riding a horse",
    "the coffee is hot ☕ and the café is open",
    "Zürich, São Paulo and 東京 at dawn",
    "3 apples & 12 oranges &amp; 1 banana",
    "",
    "A BLURRY PHOTO OF A MOTORCYCLE!!!",
    "satellite image of farmland",
    "a sketch of a teddy bear",
    "a close-up photo of a rocket engine " * 8,  # longer than the context: truncated
    "x",
)


class ParityError(IntegrityError):
    """The exported graphs disagree with the torch model: the conversion is refused."""


def _synthetic_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Gradients, checkerboards, discs and noise at various sizes and aspect ratios (HWC uint8)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        yy, xx = np.mgrid[0:h, 0:w]
        yy, xx = yy[..., None] / h, xx[..., None] / w
        a, b = rng.random(3), rng.random(3)
        kind = i % 4
        if kind == 0:
            im = a * xx + b * (1 - yy)
        elif kind == 1:
            cells = int(rng.integers(2, 12))
            im = np.where(((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 == 0, a, b)
        elif kind == 2:
            cy, cx, r = rng.random(), rng.random(), 0.05 + 0.3 * rng.random()
            im = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, a, b)
        else:
            im = rng.random((h, w, 3))
        images.append(np.clip(im * 255, 0, 255).astype(np.uint8))
    return images


def parity_inputs(
    preprocess_cfg: dict[str, Any], context_length: int, n_images: int = 8, n_texts: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel values and token ids for parity: synthetic pictures (+ noise) and real captions."""
    size = int(preprocess_cfg["image_size"])
    n_pictures = (n_images + 1) // 2
    try:
        from edgeclip.preprocess import Preprocessor

        result = Preprocessor(preprocess_cfg)(_synthetic_images(n_pictures))
        pictures = result[0]
    except ImportError:  # runtime without its preprocessing module: noise only
        pictures = np.zeros((0, 3, size, size), np.float32)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((n_images - len(pictures), 3, size, size)).astype(np.float32)
    pixels = np.concatenate([pictures, noise]).astype(np.float32)
    captions = [
        CAPTIONS[i % len(CAPTIONS)] + ("" if i < len(CAPTIONS) else f" {i}") for i in range(n_texts)
    ]
    try:
        from edgeclip.tokenizer import tokenize

        ids = tokenize(captions, context_length=context_length)
    except ImportError:  # no tokenizer: random ids with CLIP's start/end tokens
        ids = np.zeros((n_texts, context_length), np.int64)
        for row in range(n_texts):
            n = int(rng.integers(1, context_length - 1))
            ids[row, 0], ids[row, n] = 49406, 49407
            ids[row, 1:n] = rng.integers(1, 49406, n - 1)
    return pixels, np.asarray(ids, np.int64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a * b).sum(axis=1) / den
    return np.where(np.isfinite(cos), cos, -1.0)


def measure_parity(model: Any, image_onnx: Path, text_onnx: Path, pixels, ids) -> dict[str, Any]:
    """Cosine (normalised embeddings) of the ONNX Runtime graphs vs torch fp32, per tower."""
    import onnxruntime as ort

    from .checkpoints import torch_embeddings

    ref = torch_embeddings(model, pixels, ids)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    image = ort.InferenceSession(str(image_onnx), opts, providers=providers)
    text = ort.InferenceSession(str(text_onnx), opts, providers=providers)
    # Batch 1 then the rest: both differ from the export's dummy batch, so dynamic batch is tested.
    got_i = (
        np.concatenate(
            [
                image.run(None, {"pixel_values": pixels[:1]})[0],
                image.run(None, {"pixel_values": pixels[1:]})[0],
            ]
        )
        if len(pixels) > 1
        else image.run(None, {"pixel_values": pixels})[0]
    )
    got_t = (
        np.concatenate(
            [text.run(None, {"input_ids": ids[:1]})[0], text.run(None, {"input_ids": ids[1:]})[0]]
        )
        if len(ids) > 1
        else text.run(None, {"input_ids": ids})[0]
    )
    ci, ct = _cosines(got_i, ref["image"]), _cosines(got_t, ref["text"])
    return {
        "reference": "torch-fp32",
        "image_cosine_min": float(ci.min()),
        "image_cosine_mean": float(ci.mean()),
        "text_cosine_min": float(ct.min()),
        "text_cosine_mean": float(ct.mean()),
        "image_max_abs_diff": float(np.abs(got_i - ref["image"]).max()),
        "text_max_abs_diff": float(np.abs(got_t - ref["text"]).max()),
        "n_images": int(len(pixels)),
        "n_texts": int(len(ids)),
    }


def _preprocess_cfg(info: dict[str, Any], image_size: int) -> dict[str, Any]:
    from edgeclip.preprocess import DEFAULT_CONFIG, hf_to_cfg

    pc = info.get("preprocessor_config")
    if pc is None:
        return {**DEFAULT_CONFIG, "image_size": image_size}
    cfg = {**DEFAULT_CONFIG, **hf_to_cfg(pc)}
    if int(cfg["image_size"]) != image_size:
        raise InputError(
            f"{info['path']}: preprocessor_config.json crops to {cfg['image_size']} px but the "
            f"vision tower takes {image_size} px; fix crop_size in preprocessor_config.json."
        )
    return cfg


def _source(info: dict[str, Any]) -> dict[str, Any]:
    files = {}
    base = Path(info["path"])
    base = base if base.is_dir() else base.parent
    for f in info["files"]:
        f = Path(f)
        rel = f.relative_to(base).as_posix() if f.is_relative_to(base) else str(f)
        files[rel] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    return {
        "kind": info["kind"],
        "path": info["path"],
        "repo": None,
        "revision": None,
        "files": files,
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("edgeclip", "torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def place_bundle(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``out``; an existing bundle is swapped out only once all is written."""
    if not out.exists():
        os.replace(staging, out)
        return
    if not overwrite:
        raise InputError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it.")
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / "old")
    try:
        os.replace(staging, out)
    except OSError:
        os.replace(trash / "old", out)  # put the previous bundle back
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def convert(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    n_parity_images: int = 8,
    n_parity_texts: int = 16,
    overwrite: bool = False,
    config: str | os.PathLike | None = None,
    min_cosine: float = MIN_COSINE,
    progress: bool | None = None,
) -> Path:
    """Convert a CLIP checkpoint into a bundle directory at ``out_dir``; return its path.

    ``config``: the open_clip JSON config when it is not next to the weights. The conversion
    is refused (``ParityError``, nothing written) if any parity cosine is below ``min_cosine``.
    ``progress``: a tqdm bar (None: only on a terminal).
    """
    from tqdm.auto import tqdm

    from edgeclip.tokenizer import default_vocab_path

    from .checkpoints import load_checkpoint
    from .onnx_export import OPSET, export_image_tower, export_text_tower

    for label, n in (("n_parity_images", n_parity_images), ("n_parity_texts", n_parity_texts)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"{label}={n!r}: expected a positive integer.")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InputError(f"name={name!r}: expected a non-empty string (or None for the dir name).")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    bar = tqdm(
        total=5,
        desc=f"convert {Path(checkpoint_path).name}",
        unit="step",
        disable=(not progress) if progress is not None else None,
    )

    def step(label: str, t0: float) -> None:
        seconds[label] = round(time.perf_counter() - t0, 3)
        bar.update(1)

    staging: Path | None = None
    try:
        t0 = time.perf_counter()
        bar.set_postfix_str("load")
        model, info = load_checkpoint(checkpoint_path, config=config)
        arch = info["architecture"]
        preprocess = _preprocess_cfg(info, arch["image_size"])
        step("load", t0)

        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; a bundle is meant to be shared
        graphs = staging / VARIANT
        t0 = time.perf_counter()
        bar.set_postfix_str("export image tower")
        export_image_tower(model, graphs / "image.onnx")
        step("export_image", t0)
        t0 = time.perf_counter()
        bar.set_postfix_str("export text tower")
        export_text_tower(model, graphs / "text.onnx")
        step("export_text", t0)

        t0 = time.perf_counter()
        bar.set_postfix_str("parity vs torch")
        pixels, ids = parity_inputs(
            preprocess, arch["context_length"], n_parity_images, n_parity_texts
        )
        parity = measure_parity(model, graphs / "image.onnx", graphs / "text.onnx", pixels, ids)
        worst = min(parity["image_cosine_min"], parity["text_cosine_min"])
        if not worst >= min_cosine:
            raise ParityError(
                f"{checkpoint_path}: the exported ONNX graphs disagree with the torch model "
                f"(image min cosine {parity['image_cosine_min']:.6f}, text "
                f"{parity['text_cosine_min']:.6f}; required ≥ {min_cosine}). No bundle was "
                "written; report this with the checkpoint's config.json."
            )
        step("parity", t0)

        t0 = time.perf_counter()
        bar.set_postfix_str("write bundle")
        (staging / "tokenizer").mkdir()
        shutil.copyfile(default_vocab_path(), staging / "tokenizer" / VOCAB_NAME)
        tower = {"batch_sizes": None}
        manifest = {
            "name": name or out.name,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "edgeclip_version": _versions().get("edgeclip", "0.1.0"),
            "source": _source(info),
            "architecture": arch,
            "logit_scale": info["logit_scale"],
            "tokenizer": {
                "kind": "clip-bpe",
                "file": f"tokenizer/{VOCAB_NAME}",
                "context_length": arch["context_length"],
            },
            "preprocess": preprocess,
            "variants": [
                {
                    "id": VARIANT,
                    "backend": "onnx",
                    "precision": "fp32",
                    "image": {
                        "file": f"{VARIANT}/image.onnx",
                        "input": "pixel_values",
                        "output": "image_embeds",
                        **tower,
                    },
                    "text": {
                        "file": f"{VARIANT}/text.onnx",
                        "input": "input_ids",
                        "output": "text_embeds",
                        **tower,
                    },
                    "parity": parity,
                    "gate": {"passed": True, "reason": None, "min_cosine": min_cosine},
                }
            ],
        }
        # "write" covers the tokenizer copy and manifest assembly, not the hashing of the files
        # by write_manifest, which happens after the manifest content is fixed.
        manifest["conversion"] = {
            "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
            "opset": OPSET,
            "versions": _versions(),
            "seconds": seconds,
        }
        seconds["write"] = round(time.perf_counter() - t0, 3)
        write_manifest(staging, manifest)
        place_bundle(staging, out, overwrite)
        staging = None
        bar.update(1)
    finally:
        bar.close()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return out
