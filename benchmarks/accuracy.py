"""Zero-shot top-1/top-5 on a labelled image folder, and top-1 agreement with the fp32 variant.

Folder layout: one subfolder per class (``FOLDER/golden_retriever/*.jpg``). Class names are the
folder names with ``_`` as spaces, or come from a JSON map ``{"folder": "class name"}`` (a file
given with ``--class-map``, or ``FOLDER/classes.json``). Prompts: a template set name
('photo', 'imagenet7', 'imagenet80') or templates with ``{}``. Images that cannot be read are
skipped and counted, never fatal. With random weights these numbers mean nothing; they are
meaningful for trained checkpoints only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import BatchError, InputError


def scan_folder(
    folder: str | os.PathLike, class_map: str | os.PathLike | dict | None = None
) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, integer labels, class names) of a one-subfolder-per-class tree."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"accuracy folder {root} does not exist or is not a directory.")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(
            f"accuracy folder {root} has no class subfolders; expected FOLDER/<class name>/<images>."
        )
    mapping: dict[str, str] = {}
    if isinstance(class_map, dict):
        mapping = dict(class_map)
    elif class_map is not None or (root / "classes.json").is_file():
        path = Path(class_map) if class_map is not None else root / "classes.json"
        try:
            mapping = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"class map {path} cannot be read as JSON ({exc}).") from exc
        if not isinstance(mapping, dict):
            raise InputError(f"class map {path} must be a JSON object {{folder: class name}}.")
    if mapping and not any(d.name in mapping for d in classes):
        # a map for another layout (WordNet ids for named folders): every name would silently
        # fall back to its folder's
        raise InputError(f"class map keys ({_few(sorted(mapping))}) name none of the class "
                         f"folders of {root} ({_few([d.name for d in classes])}); key the map by "
                         "folder name.")  # fmt: skip
    names = [str(mapping.get(d.name, d.name.replace("_", " "))) for d in classes]
    paths: list[Path] = []
    labels: list[int] = []
    for i, d in enumerate(classes):
        for f in sorted(d.rglob("*")):
            # every non-hidden file counts: an unreadable one is skipped and counted later
            if (
                f.is_file()
                and not f.name.startswith(".")
                and f.suffix.lower() not in {".json", ".txt"}
            ):
                paths.append(f)
                labels.append(i)
    if not paths:
        raise InputError(
            f"accuracy folder {root} has {len(classes)} class folders but no image files in them."
        )
    if len(classes) < 2:  # one label: every image is "right", a 100 % that measures nothing
        raise InputError(f"accuracy folder {root} has one class folder ({classes[0].name}); "
                         "zero-shot accuracy needs two or more, one per class.")  # fmt: skip
    return paths, np.asarray(labels), names


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def check_readable(folder: str | os.PathLike, paths: list[Path]) -> None:
    """``InputError`` unless at least one of ``paths`` decodes as an image: found now, before
    the timing, not when the accuracy pass reaches it (paths are tried in order, so a usable
    folder costs one decode)."""
    from edgeclip.errors import EdgeclipError
    from edgeclip.images import load_image

    first = None
    for path in paths:
        try:
            load_image(path)
            return
        except (EdgeclipError, OSError, ValueError) as exc:
            first = first or f"{path}: {str(exc).rstrip('.')}"
    raise InputError(f"none of the {len(paths)} files under accuracy folder {folder} can be read "
                     f"as an image (first: {first}); point --accuracy at a folder of images.")  # fmt: skip


def _embed_images(model: Any, paths: list[Path], batch: int) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings of every image (NaN rows for failures) and the failures by index."""
    out, failures = [], {}
    for start in range(0, len(paths), batch):
        chunk = [str(p) for p in paths[start : start + batch]]
        try:
            emb = model.encode_image(chunk)
        except BatchError as exc:
            emb = exc.results
            failures.update({start + i: r for i, r in exc.failures.items()})
            if emb is None:  # nothing readable in this chunk
                emb = np.full((len(chunk), model.embed_dim or 1), np.nan, dtype=np.float32)
        out.append(emb)
    widths = {e.shape[1] for e in out}
    if len(widths) > 1:  # an all-failed chunk guessed the width: fix it up
        w = max(widths)
        out = [e if e.shape[1] == w else np.full((len(e), w), np.nan, np.float32) for e in out]
    return np.concatenate(out), failures


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest logits."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def evaluate(
    models: dict[str, Any],
    folder: str | os.PathLike,
    *,
    templates: str | list[str] | None = "photo",
    class_map: str | os.PathLike | dict | None = None,
    reference: str | None = None,
    batch_size: int = 32,
    progress: Any = None,
) -> dict[str, Any]:
    """Zero-shot accuracy of each loaded model (``{variant id: EdgeClip}``) on ``folder``.

    ``reference``: the variant whose top-1 predictions the others are compared with
    (the fp32 one). Returns the per-variant rows, the images skipped and the class count.
    """
    paths, labels, names = scan_folder(folder, class_map)
    rows, preds, skipped = [], {}, {}
    for vid, model in models.items():
        text = model.label_embeddings(names, templates)
        img, failures = _embed_images(model, paths, batch_size)
        skipped.update(failures)
        ok = ~np.isnan(img).any(axis=1)
        if not ok.any():
            raise InputError(f"none of the {len(paths)} images under {folder} could be read.")
        logits = img[ok] @ text.T
        preds[vid] = (np.flatnonzero(ok), np.argmax(logits, axis=1))
        rows.append(
            {
                "variant": vid,
                "top1": topk_accuracy(logits, labels[ok], 1),
                # with 5 classes or fewer every image is in its top 5: no number to show
                "top5": topk_accuracy(logits, labels[ok], 5) if len(names) > 5 else None,
                "n_images": int(ok.sum()),
            }
        )
        if progress is not None:
            progress.update(1)
    if reference in preds:
        ref_idx, ref_pred = preds[reference]
        ref = dict(zip(ref_idx.tolist(), ref_pred.tolist()))
        for row in rows:
            idx, pred = preds[row["variant"]]
            common = [(ref[i], p) for i, p in zip(idx.tolist(), pred.tolist()) if i in ref]
            row["top1_agreement"] = float(np.mean([a == b for a, b in common])) if common else None
            row["agreement_reference"] = reference
    return {
        "folder": str(folder),
        "n_classes": len(names),
        "n_files": len(paths),
        "skipped": len(skipped),
        "skipped_examples": [f"{paths[i]}: {r}" for i, r in sorted(skipped.items())[:5]],
        "templates": templates if isinstance(templates, (str, type(None))) else list(templates),
        "rows": rows,
    }
