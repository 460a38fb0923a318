"""Checkpoint → edgeclip bundle in one pass, through one writer with one atomic swap.

``convert(checkpoint, out_dir, backends=..., precisions=...)`` loads the checkpoint, exports both
towers into a hidden staging directory next to ``out_dir``, refuses the export (raises, leaves
nothing behind) when a graph disagrees with transformers (``edgeclip.gate.decide_export``),
computes the torch fp32 reference on held-out data, writes the probe set the runtime re-checks
on every host (``edgeclip.probeset``), builds and gates every requested variant
(``converters.variants``), writes the manifest with every file's sha256 and renames the staging
directory into place. A conversion that dies at any point leaves at most a hidden
``.NAME.partial-*`` directory, never a bundle that loads.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bundle import sha256_file, write_manifest
from edgeclip.errors import InputError, IntegrityError
from edgeclip.gate import EXPORT_MIN_COSINE, decide_export

from .export_check import measure_parity, parity_inputs
from .output_dir import check_output, place_bundle, staging_dir

__all__ = ["convert", "ParityError", "MIN_COSINE", "parity_inputs", "measure_parity", "place_bundle"]

MIN_COSINE = EXPORT_MIN_COSINE
VARIANT = "onnx-fp32"
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"

class ParityError(IntegrityError):
    """The exported graphs disagree with the torch model: the conversion is refused."""


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


def _reference_variant(export_check: dict[str, Any]) -> dict[str, Any]:
    """The exported fp32 graphs as the bundle's reference variant (gated like every other)."""
    towers = {
        tower: {"file": f"{VARIANT}/{tower}.onnx", "input": inp, "output": out, "batch_sizes": None}
        for tower, inp, out in (("image", "pixel_values", "image_embeds"),
                                ("text", "input_ids", "text_embeds"))
    }  # fmt: skip
    towers["text"]["dynamic_sequence"] = True  # onnx_export: dynamic batch and sequence axes
    return {"id": VARIANT, "backend": "onnx", "precision": "fp32", **towers,
            "options": {"role": "reference", "export_parity": export_check}}  # fmt: skip


def _export_checked(model, info, staging: Path, n_images: int, n_texts: int, min_cosine: float,
                    step) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Export both towers into ``staging`` and refuse them unless they match transformers."""
    from .onnx_export import export_image_tower, export_text_tower

    arch = info["architecture"]
    preprocess = _preprocess_cfg(info, arch["image_size"])
    graphs = staging / VARIANT
    step("export_image", lambda: export_image_tower(model, graphs / "image.onnx"))
    step("export_text", lambda: export_text_tower(model, graphs / "text.onnx"))
    variant = _reference_variant({})
    pixels, ids = parity_inputs(preprocess, arch["context_length"], n_images, n_texts)
    parity = step("parity", lambda: measure_parity(model, staging, variant, pixels, ids))
    verdict = decide_export(parity, min_cosine)
    if not verdict["passed"]:
        raise ParityError(
            f"{info['path']}: the exported ONNX graphs disagree with the torch model "
            f"({verdict['reason']}). No bundle was written; report this with the checkpoint's "
            "config.json."
        )
    variant["options"]["export_parity"] = {**parity, "gate": verdict}
    return variant, preprocess


def _probe_entry(staging: Path, calibration: Any, ref: Any, preprocess: dict) -> dict[str, Any]:
    """Write the probe set: first held-out images and texts, all labels, their reference vectors."""
    from edgeclip.probeset import N_IMAGES, N_TEXTS, crops_from_pixels, write_probe

    n_i, n_t = min(N_IMAGES, len(calibration.eval_pixels)), min(N_TEXTS, len(calibration.eval_ids))
    ids = np.concatenate([calibration.eval_ids[:n_t], calibration.probe_ids])
    ref_text = np.concatenate([ref.text[:n_t], ref.probe_text])
    crops = crops_from_pixels(calibration.eval_pixels[:n_i], preprocess)
    return write_probe(staging, crops, ids, n_t, calibration.probe_labels, ref.image[:n_i],
                       ref_text, ref.name)  # fmt: skip


def _manifest(name: str, info: dict, preprocess: dict, variants: list, extra: dict) -> dict:
    from .onnx_export import OPSET

    arch = info["architecture"]
    return {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edgeclip_version": _versions().get("edgeclip", "0.1.0"),
        "source": _source(info),
        "architecture": arch,
        "logit_scale": info["logit_scale"],
        "tokenizer": {"kind": "clip-bpe", "file": f"tokenizer/{VOCAB_NAME}",
                      "context_length": arch["context_length"]},  # fmt: skip
        "preprocess": preprocess,
        "variants": variants,
        **extra,
        "conversion": {"exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                       "opset": OPSET, "versions": _versions()},  # fmt: skip
    }


def convert(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    backends: str | list[str] = "onnx",
    precisions: str | list[str] = "fp32",
    calibration_dir: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    n_calib: int = 32,
    n_eval: int = 48,
    n_parity_images: int = 8,
    n_parity_texts: int = 16,
    overwrite: bool = False,
    config: str | os.PathLike | None = None,
    min_cosine: float = MIN_COSINE,
    keep_failed: bool = False,
    builder_options: dict[str, dict[str, Any]] | None = None,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
    progress: bool | None = None,
    log: Any = None,
    int8_configs: str | dict[str, str] | None = None,
    int8_fallback: bool = False,
) -> Path:
    """Convert a CLIP checkpoint into a bundle directory at ``out_dir``; return its path.

    ``backends`` × ``precisions`` (comma lists) are built and gated in the same pass; the
    reference ``onnx-fp32`` is always there. ``config``: the open_clip JSON config when it is
    not next to the weights. The export is refused (``ParityError``, nothing written) if any
    export cosine is below ``min_cosine``. ``calibration_dir``/``captions``: images (and
    captions) for INT8 calibration and the gate (default: procedural shapes). ``int8_configs``:
    INT8 configurations pinned per backend (``converters.int8_pins``). ``progress``: a
    tqdm bar (None: only on a terminal). ``log``: where variant messages go (default: the bar).
    """
    from .calibration import check_calibration_args
    from .int8_pins import parse_int8_configs
    from .variants import check_requested

    # Every argument is checked before the checkpoint is read: a typo costs no export.
    _check_counts(n_parity_images, n_parity_texts, name)
    check_requested(backends, precisions)
    parse_int8_configs(int8_configs)
    check_calibration_args(calibration_dir, captions)
    out = check_output(out_dir, overwrite)
    staging = staging_dir(out)
    steps = _Steps(f"convert {Path(checkpoint_path).name}", progress)
    log = log or steps.write
    try:
        _write_staging(staging, steps, checkpoint_path, config, name or out.name,
            (n_parity_images, n_parity_texts, min_cosine),
            dict(backends=backends, precisions=precisions, thresholds=thresholds,
                 threads=threads, keep_failed=keep_failed, builder_options=builder_options,
                 int8_configs=int8_configs, int8_fallback=int8_fallback),
            dict(folder=calibration_dir, captions=captions, n_calib=n_calib, n_eval=n_eval), log,
        )  # fmt: skip
        place_bundle(staging, out, overwrite)
        staging = None
    finally:
        steps.close()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_staging(staging: Path, steps: _Steps, checkpoint_path: Any, config: Any, name: str,
                   parity: tuple, build: dict, calib: dict, log: Any) -> None:  # fmt: skip
    """Fill ``staging``: the checked towers, the tokenizer, the variants and the manifest."""
    from .checkpoints import load_checkpoint

    model, info = steps("load", lambda: load_checkpoint(checkpoint_path, config=config))
    reference, preprocess = _export_checked(model, info, staging, *parity, steps)
    (staging / "tokenizer").mkdir()
    shutil.copyfile(_vocab(), staging / "tokenizer" / VOCAB_NAME)
    kept, extra = steps("variants", lambda: _variants(staging, reference, model, preprocess,
                        info["architecture"]["context_length"], build, calib, log))  # fmt: skip
    manifest = _manifest(name, info, preprocess, kept, extra)
    manifest["conversion"]["seconds"] = steps.seconds
    write_manifest(staging, manifest)


def _variants(staging: Path, reference: dict, model: Any, preprocess: dict, context_length: int,
              build: dict, calib: dict, log: Any) -> tuple[list[dict], dict[str, Any]]:  # fmt: skip
    """Gate the reference, write the probe set, build and gate the other variants."""
    from .calibration import load_calibration
    from .gate import evaluate, reference_embeddings
    from .variants import build_variants

    calibration = load_calibration(calib["folder"], preprocess, context_length,
                                   captions=calib["captions"], n_calib=calib["n_calib"],
                                   n_eval=calib["n_eval"], log=log)  # fmt: skip
    ref = reference_embeddings(calibration, model)
    gated = evaluate(staging, reference, calibration, ref, build["thresholds"], build["threads"])
    if not gated["gate"]["passed"]:
        raise ParityError(f"the exported fp32 graphs miss the accuracy gate against torch "
                          f"({gated['gate']['reason']}); no bundle was written.")  # fmt: skip
    probe = _probe_entry(staging, calibration, ref, preprocess)
    kept, rejected = build_variants(staging, gated, model, calibration=calibration,
                                    reference=ref, log=log, **build)  # fmt: skip
    extra = {
        "probe": probe,
        "calibration": calibration.summary(),
        "rejected_variants": [{"id": v["id"], "reason": v["gate"]["reason"],
                               "parity": v.get("parity")} for v in rejected],  # fmt: skip
    }
    return [gated, *kept], extra


def _vocab() -> Path:
    from edgeclip.tokenizer import default_vocab_path

    return Path(default_vocab_path())


def _check_counts(n_images: Any, n_texts: Any, name: Any) -> None:
    for label, flag, n in (("n_parity_images", "--parity-images", n_images),
                           ("n_parity_texts", "--parity-texts", n_texts)):  # fmt: skip
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"{label}={n!r} ({flag}): expected a positive integer, e.g. 8.")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InputError(f"name={name!r}: expected a non-empty string (or None for the dir name).")


class _Steps:
    """Timed conversion steps behind one progress display (``edgeclip.progress``)."""

    def __init__(self, desc: str, enabled: bool | None):
        from edgeclip.progress import progress

        self.seconds: dict[str, float] = {}
        self._bar = progress(5, desc, unit="step", enabled=enabled)

    def __call__(self, label: str, work):
        self._bar.set_postfix_str(label)
        t0 = time.perf_counter()
        result = work()
        self.seconds[label] = round(time.perf_counter() - t0, 3)
        self._bar.update(1)
        return result

    def write(self, message: str) -> None:
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()
