"""Add gated backend × precision variants to an existing bundle, swapped in atomically."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgeclip.errors import InputError

from .bundle_writer import place_bundle
from .output_dir import staging_dir
from .variants import build_variants, check_requested


def add_variants(
    bundle_dir: str | Path,
    checkpoint: Any = None,
    *,
    backends: str | Iterable[str] = "onnx",
    precisions: str | Iterable[str] = "fp32,fp16,int8",
    calibration_dir: str | Path | None = None,
    captions: str | Path | None = None,
    n_calib: int = 32,
    n_eval: int = 48,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
    keep_failed: bool = False,
    builder_options: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], Any] = print,
    int8_configs: str | dict[str, str] | None = None,
    int8_fallback: bool = False,
) -> dict[str, Any]:
    """Add gated variants to an existing bundle (one with ``onnx-fp32``); return the new manifest.

    ``checkpoint``: the checkpoint path (or a loaded ``CLIPModel``) the bundle came from; it is
    the torch fp32 reference and LiteRT's source. Without it the reference is onnx-fp32.
    The bundle is rebuilt in a sibling temporary directory and swapped in only when complete:
    an interrupted run leaves the old bundle as it was. Variants with the same id are replaced.
    ``int8_configs``: INT8 configurations pinned per backend (``converters.int8_pins``).
    """
    from .calibration import check_calibration_args, load_calibration
    from .int8_pins import parse_int8_configs

    bundle = Path(bundle_dir).expanduser().resolve()
    manifest, fp32 = _read_bundle(bundle)
    check_requested(backends, precisions)  # before any heavy work
    parse_int8_configs(int8_configs)
    check_calibration_args(calibration_dir, captions)
    model = _reference_model(checkpoint)
    calibration = load_calibration(
        calibration_dir,
        manifest.get("preprocess"),
        int(manifest.get("tokenizer", {}).get("context_length", 77)),
        captions=captions,
        n_calib=n_calib,
        n_eval=n_eval,
        log=log,
    )
    build = dict(backends=backends, precisions=precisions, thresholds=thresholds, threads=threads,
                 keep_failed=keep_failed, builder_options=builder_options,
                 int8_configs=int8_configs, int8_fallback=int8_fallback)  # fmt: skip
    staging = staging_dir(bundle)  # also clears what killed runs left beside the bundle
    try:
        manifest = _rebuild(bundle, staging, manifest, fp32, model, calibration, build, log)
        place_bundle(staging, bundle, overwrite=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _read_bundle(bundle: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle's manifest and its onnx-fp32 variant (``InputError`` if either is missing)."""
    import json

    from edgeclip.bundle import MANIFEST

    if not (bundle / MANIFEST).is_file():
        raise InputError(
            f"{bundle} is not an edgeclip bundle (no {MANIFEST}); convert the checkpoint first."
        )
    manifest = json.loads((bundle / MANIFEST).read_text())
    fp32 = next((v for v in manifest.get("variants", []) if v["id"] == "onnx-fp32"), None)
    if fp32 is None:
        raise InputError(f"{bundle} has no onnx-fp32 variant to quantize from; re-convert it.")
    return manifest, fp32


def _reference_model(checkpoint: Any) -> Any:
    """The model a checkpoint path loads to; a loaded model (or None) is returned as given."""
    if isinstance(checkpoint, (str, Path)):
        from .checkpoints import load_checkpoint

        model, _ = load_checkpoint(checkpoint)
        return model
    return checkpoint


def _rebuild(
    bundle: Path,
    staging: Path,
    manifest: dict[str, Any],
    fp32: dict[str, Any],
    model: Any,
    calibration: Any,
    build: dict[str, Any],
    log: Callable[[str], Any],
) -> dict[str, Any]:
    """Copy ``bundle`` into ``staging``, build and gate variants there; return the new manifest."""
    import os

    from edgeclip.bundle import write_manifest

    from .bundle_writer import _probe_entry
    from .gate import reference_embeddings

    shutil.copytree(bundle, staging, dirs_exist_ok=True)
    os.chmod(staging, 0o755)
    ref = reference_embeddings(calibration, model, staging, fp32)
    if not manifest.get("probe"):  # a bundle from before probe sets: give it one
        manifest["probe"] = _probe_entry(staging, calibration, ref, manifest.get("preprocess"))
    kept, rejected = build_variants(
        staging, fp32, model, reference=ref, calibration=calibration, log=log, **build
    )
    new_ids = {v["id"] for v in kept} | {v["id"] for v in rejected}
    manifest["variants"] = [v for v in manifest["variants"] if v["id"] not in new_ids] + kept
    manifest["calibration"] = calibration.summary()
    manifest["rejected_variants"] = [
        {"id": v["id"], "reason": v["gate"]["reason"], "parity": v.get("parity")}
        for v in rejected
    ]
    return write_manifest(staging, manifest)
