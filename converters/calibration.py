"""Calibration and gate data: deterministic image/caption sets from a folder, or synthetic ones.

``load_calibration`` returns a ``CalibrationData`` with three disjoint parts:

- ``calib_*``: what quantizers see (activation ranges);
- ``eval_*``: held-out images and texts the gate measures embedding cosine on;
- ``probe_*``: the zero-shot probe (the held-out images × a label set).

Same folder + same arguments → the same arrays, bit for bit (sorted file list, seeded shuffle).
Without a folder, a small procedural set (coloured shapes on noisy backgrounds, with captions)
stands in; it needs nothing but PIL and numpy.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import InputError
from edgeclip.index.walk import image_files
from edgeclip.probeset import (  # noqa: F401 - COLOURS, SHAPES re-exported for callers
    COLOURS,
    SHAPES,
    TEMPLATES,
    synthetic_labels,
    synthetic_pairs,
)


@dataclass
class CalibrationData:
    """Preprocessed arrays for calibration, gate evaluation and the zero-shot probe."""

    calib_pixels: np.ndarray
    calib_ids: np.ndarray
    eval_pixels: np.ndarray
    eval_ids: np.ndarray
    probe_labels: list[str]
    probe_ids: np.ndarray
    source: str
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-able description for the manifest (counts, source, how many files were skipped)."""
        return {
            "source": self.source,
            "n_calib_images": int(len(self.calib_pixels)),
            "n_calib_texts": int(len(self.calib_ids)),
            "n_eval_images": int(len(self.eval_pixels)),
            "n_eval_texts": int(len(self.eval_ids)),
            "n_probe_labels": len(self.probe_labels),
            "skipped_images": len(self.skipped),
        }


def _read_captions(path: Path) -> tuple[dict[str, str], list[str]]:
    """``name<TAB>caption`` lines map a file to its caption; bare lines are free captions."""
    if not path.is_file():
        raise InputError(
            f"captions file {path} does not exist; give a text file, one caption a line."
        )
    by_name, free = {}, []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            name, caption = line.split("\t", 1)
            by_name[name.strip()] = caption.strip()
        else:
            free.append(line)
    return by_name, free


def check_calibration_args(folder: str | Path | None, captions: str | Path | None) -> None:
    """Refuse a missing calibration folder or captions file before any model work."""
    for flag, value in (("--calibration", folder), ("--captions", captions)):
        if value is not None and not str(value).strip():  # Path("") is the current folder
            raise InputError(f"{flag} is an empty string; give a path, or leave {flag} out.")
    if captions is not None and folder is None:
        raise InputError(
            f"captions file {captions} is read only with a calibration folder (its lines name "
            "that folder's images); add --calibration IMAGE_DIR, or drop --captions."
        )
    if folder is not None and not Path(folder).is_dir():
        raise InputError(
            f"calibration folder {folder} does not exist or is not a directory; give a folder of "
            "images (e.g. 100 photos like the ones you will embed), or omit it to use synthetic data."
        )
    if captions is not None and not Path(captions).is_file():
        raise InputError(
            f"captions file {captions} does not exist; give a text file, one caption a line."
        )


def _listing(skipped: dict[str, str], limit: int = 10) -> str:
    """``name (reason)`` for the first ``limit`` skipped files, then how many more."""
    shown = [f"{name} ({why})" for name, why in list(skipped.items())[:limit]]
    more = len(skipped) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _split(n: int, n_calib: int, n_eval: int) -> tuple[int, int]:
    """Sizes of the calibration and held-out parts of ``n`` items (held-out gets at least 1)."""
    if n < 2:
        raise InputError(f"need at least 2 readable images for calibration and the gate, got {n}.")
    if n < n_calib + n_eval:
        # Too few items: share them out in the requested proportion, each part non-empty.
        n_eval = min(n - 1, max(1, round(n * n_eval / (n_calib + n_eval))))
    return min(n_calib, n - n_eval), n_eval


@dataclass
class _Source:
    """The items to read (in ``order``), their captions and the probe label set."""

    items: list[Any]
    caps: list[str]
    order: list[int]
    label_set: list[str]
    verbatim: bool  # labels are captions: each is its own prompt
    name: str


def _synthetic_source(n: int, image_size: int, seed: int, labels: list[str] | None) -> _Source:
    """``n`` procedural pictures and captions; labels default to the synthetic colour × shapes."""
    images, caps, _ = synthetic_pairs(n, image_size, seed)
    label_set = labels or synthetic_labels()
    return _Source(images, caps, list(range(len(images))), label_set, False, "synthetic")


def _folder_source(
    folder: str | Path, captions: str | Path | None, seed: int, labels: list[str] | None
) -> _Source:
    """Every image under ``folder`` (recursive), in a seeded shuffle, with its caption if any."""
    # Absolute, as image_files lists them: a relative --calibration must not fail relative_to.
    root = Path(os.path.abspath(folder))
    check_calibration_args(root, captions)
    files = sorted(Path(p) for p in image_files(root))  # the files edgeclip index would read
    if not files:
        raise InputError(f"calibration folder {root} holds no images (JPEG, PNG, WebP, GIF, "
                         "TIFF, BMP; hidden folders are skipped).")  # fmt: skip
    by_name, free = _read_captions(Path(captions)) if captions else ({}, [])
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    caps = [
        by_name.get(f.name) or by_name.get(f.relative_to(root).as_posix()) or "" for f in files
    ]
    label_set, verbatim = _folder_labels(root, files, caps, free, labels)
    return _Source(files, caps, order, label_set, verbatim, f"folder:{root}")


def _folder_labels(
    root: Path, files: list[Path], caps: list[str], free: list[str], labels: list[str] | None
) -> tuple[list[str], bool]:
    """``(label_set, verbatim)``: ``labels``, sub-directory names, captions, or synthetic labels."""
    subdirs = sorted({f.parent.name for f in files if f.parent != root})
    label_set = labels or (subdirs if len(subdirs) >= 2 else None)
    verbatim = False
    if not label_set:
        # Captions as the label set: each is already a sentence, used verbatim as its prompt.
        label_set = free or sorted(set(filter(None, caps)))
        verbatim = bool(label_set)
    return label_set or synthetic_labels(), verbatim


def _read_pixels(
    pre: Any, source: _Source, want: int, log: Any
) -> tuple[list[np.ndarray], list[int], dict[str, str]]:
    """``(pixels, indices used, skipped)``: the first ``want`` readable items, in source order."""
    pixels, used, skipped = [], [], {}
    # Read only as many as needed, plus replacements for the unreadable ones.
    for idx in source.order:
        if len(pixels) >= want:
            break
        arr, good, fails = pre([source.items[idx]])
        if fails:
            skipped[str(source.items[idx])] = next(iter(fails.values()))
            continue
        pixels.append(arr[0])
        used.append(idx)
    if skipped:
        log(f"calibration: skipped {len(skipped)} unreadable image(s): {_listing(skipped)}")
    return pixels, used, skipped


def _gate_texts(caps: list[str], used: list[int], label_set: list[str]) -> list[str]:
    """The read images' captions, or prompt-like texts from the labels when under two exist."""
    texts = [caps[i] for i in used if caps[i]]
    if len(texts) < 2:
        # No captions: caption-like texts from the label set (prompts), deterministic order.
        texts = [
            t.format(c="", s=lab).replace("  ", " ") for lab in label_set for t in TEMPLATES[:2]
        ]
    return texts


def load_calibration(
    folder: str | Path | None,
    preprocess: dict[str, Any] | None = None,
    context_length: int = 77,
    *,
    captions: str | Path | None = None,
    n_calib: int = 32,
    n_eval: int = 48,
    labels: list[str] | None = None,
    seed: int = 0,
    log: Any = print,
) -> CalibrationData:
    """Build calibration/eval/probe arrays from an image folder (recursive) or synthetic pictures.

    ``folder=None`` uses the synthetic set. Unreadable images are skipped, counted and logged.
    The probe label set is ``labels`` if given, else the folder's sub-directory names (an
    ImageFolder layout), else the captions, else the synthetic colour × shape labels.
    """
    from edgeclip.preprocess import Preprocessor
    from edgeclip.tokenizer import Tokenizer

    pre = Preprocessor(preprocess or {})
    tok = Tokenizer(context_length=context_length)
    check_calibration_args(folder, captions)
    if folder is None:
        src = _synthetic_source(n_calib + n_eval, pre.image_size, seed, labels)
    else:
        src = _folder_source(folder, captions, seed, labels)
    pixels, used, skipped = _read_pixels(pre, src, n_calib + n_eval, log)
    if len(pixels) < 2 and folder is not None:
        raise InputError(
            f"calibration folder {folder}: {len(pixels)} of {len(src.items)} image files could "
            f"be read, at least 2 are needed; unreadable: {_listing(skipped)}. Replace or remove "
            "them, or omit --calibration to use synthetic data."
        )
    n_c, n_e = _split(len(pixels), n_calib, n_eval)
    px = np.stack(pixels).astype(np.float32)
    ids = tok(_gate_texts(src.caps, used, src.label_set))
    t_c, t_e = _split(len(ids), n_calib, n_eval)
    label_set = src.label_set
    prompts = list(label_set) if src.verbatim else [f"a photo of a {lab}" for lab in label_set]
    return CalibrationData(
        calib_pixels=px[:n_c],
        calib_ids=ids[:t_c],
        eval_pixels=px[n_c : n_c + n_e],
        eval_ids=ids[t_c : t_c + t_e],
        probe_labels=list(label_set),
        probe_ids=tok(prompts),
        source=src.name,
        skipped=skipped,
    )


def preprocess_for(fp32_variant: dict[str, Any], root: Path, model: Any) -> dict[str, Any]:
    """A bundle's preprocess config: its manifest's if written yet, else the model's (or graph's) image size."""
    import json

    manifest = root / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("preprocess") or {}
    size = getattr(
        getattr(getattr(model, "config", None), "vision_config", None), "image_size", None
    )
    if size is None:
        import onnx

        graph = onnx.load(str(root / fp32_variant["image"]["file"]), load_external_data=False).graph
        size = graph.input[0].type.tensor_type.shape.dim[-1].dim_value or None
    return {"image_size": int(size)} if size else {}
