"""Which variants to measure, and how to run each one's towers and the torch baseline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeclip.bundle import Bundle, Variant
from edgeclip.errors import BackendUnavailableError, InputError, ModelNotFoundError


def _split(spec: str | list[str] | None, flag: str = "--backends") -> list[str] | None:
    """'all' / None → None (no filter); 'a,b' → ['a', 'b']; ``InputError`` for a spec that
    names nothing (``''``, ``','``): taking it for 'all' would measure what was not asked for."""
    if spec is None:
        return None
    items = spec if isinstance(spec, list) else str(spec).split(",")
    items = [s.strip().lower() for s in items if s.strip()]
    if not items:
        example = "onnx,openvino" if flag == "--backends" else "fp32,int8"
        raise InputError(f"{flag} {spec!r} names nothing; give a comma list such as {example}, "
                         "or all (the default).")  # fmt: skip
    return None if items == ["all"] else items


def _precision_matches(wanted: str, have: str) -> bool:
    return wanted == have or have.startswith(wanted + "-")


def select(
    bundle: Bundle,
    backends: str | list[str] | None = "all",
    precisions: str | list[str] | None = "all",
) -> tuple[list[Variant], list[str]]:
    """The bundle's variants to measure, and notes on what was skipped and why.

    Unknown backend names and precisions the bundle lacks raise ``InputError``; a backend
    requested by name but not installed raises ``BackendUnavailableError``; with 'all', variants
    of uninstalled backends are skipped with a note.
    """
    from edgeclip.backends import canonical_name, get_backend

    want_b = _split(backends, "--backends")
    want_p = _split(precisions, "--precisions")
    if want_b is not None:
        want_b = [canonical_name(b) for b in want_b]  # InputError on unknown names
        for b in want_b:
            if b != "torch":
                get_backend(b)  # BackendUnavailableError naming the pip extra
    have = ", ".join(f"{v.id} ({v.backend}/{v.precision})" for v in bundle.variants) or "none"
    # Bundle.open left these out (their files fail the manifest): name them, never drop silently
    damaged = _damaged(bundle, want_b, want_p)
    also = "".join(f" Left out, its files damaged: {vid} ({why})." for vid, why in damaged.items())
    chosen = [v for v in bundle.variants if want_b is None or v.backend in want_b]
    if want_b and not chosen and want_b != ["torch"]:
        raise InputError(
            f"bundle {bundle.root} has no variant for backend(s) {', '.join(want_b)}; it has: {have}."
            f"{also} Add one with `edgeclip convert CHECKPOINT --backend ... -o BUNDLE`."
        )
    if want_p is not None:
        missing = [p for p in want_p if not any(_precision_matches(p, v.precision) for v in chosen)]
        if missing:
            raise InputError(
                f"bundle {bundle.root} has no {', '.join(missing)} variant"
                f"{' for ' + ', '.join(want_b) if want_b else ''}; it has: {have}.{also} "
                "Pick one of those precisions or re-convert with `--precision`."
            )
        chosen = [v for v in chosen if any(_precision_matches(p, v.precision) for p in want_p)]
    notes = [f"skipped {vid}: its files are damaged ({why}); re-download or re-convert the bundle"
             for vid, why in damaged.items()]  # fmt: skip
    runnable = []
    for v in chosen:
        try:
            get_backend(v.backend)
        except (BackendUnavailableError, InputError) as exc:
            notes.append(f"skipped {v.id}: {exc}")
            continue
        if not v.passed:
            notes.append(
                f"{v.id} failed its accuracy gate ({v.gate.get('reason')}); measured anyway"
            )
        runnable.append(v)
    return runnable, notes


def _damaged(bundle: Bundle, want_b: list[str] | None, want_p: list[str] | None) -> dict[str, str]:
    """id -> what is wrong, for each variant the filters pick that ``Bundle.verify`` left out
    of ``bundle.variants`` because its files fail the manifest."""
    out = {}
    for d in bundle.manifest.get("variants", []):
        why = getattr(bundle, "damaged", {}).get(d.get("id"))
        if not why or (want_b is not None and d.get("backend") not in want_b):
            continue
        if want_p is None or any(_precision_matches(p, str(d.get("precision"))) for p in want_p):
            out[d["id"]] = "; ".join(why)
    return out


def ran_on(session: Any) -> str:
    """The device a session runs on, as a row names it: ``CPUExecutionProvider`` and OpenVINO's
    ``CPU`` are ``cpu``, ``CUDAExecutionProvider`` is ``cuda``."""
    name = str(getattr(session, "device", "cpu") or "cpu").lower()
    return name.removesuffix("executionprovider") or "cpu"


def open_towers(bundle: Bundle, variant: Variant, threads: int | None, device: str = "cpu"):
    """(run_image, run_text, device) for a variant, through the runtime's backend and
    TowerRunner; ``device`` is what the image session really runs on (``--device auto``, or a
    device that fell back to ``auto``, is labelled by it, not by what was asked).

    TowerRunner chunks and pads for fixed-shape graphs exactly as the runtime does, so the
    measured rate of a batch a LiteRT graph cannot take is the rate users get.
    """
    from edgeclip.towers import TowerRunner, variant_opener

    on_device = variant_opener(bundle.root, variant, threads, device)
    on_auto = variant_opener(bundle.root, variant, threads, "auto")

    def opener(rel: str):
        try:
            return on_device(rel)
        except InputError:
            if device in ("auto", None):
                raise
            return on_auto(rel)

    image = TowerRunner(variant.image, opener, is_text=False)
    text = TowerRunner(variant.text, opener, is_text=True)
    image.warm()
    text.warm()
    first = min(variant.image.batch_sizes) if variant.image.batch_sizes else None
    return (lambda x, b: image(x, b)), (lambda t, b: text(t, b)), ran_on(image.session(first))


def open_all(bundle: Bundle, variants: list[Variant], threads: int | None, device: str,
             notes: list[str]) -> list[tuple]:  # fmt: skip
    """(variant, run_image, run_text, device) of each variant whose graphs open here; one that
    does not (a graph its runtime rejects) is skipped with a note in ``notes``, not the end of
    the run."""
    opened = []
    for v in variants:
        try:
            opened.append((v, *open_towers(bundle, v, threads, device)))
        except Exception as exc:  # noqa: BLE001 - any runtime's load error, named in the note
            notes.append(f"skipped {v.id}: its graphs do not open here ({type(exc).__name__}: "
                         f"{str(exc).strip()[:300]}); `edgeclip verify {bundle.root}` checks it")  # fmt: skip
    return opened


def variant_size_mb(bundle: Bundle, variant: Variant) -> dict[str, float]:
    """On-disk size of the variant's image and text files, in MB (10^6 bytes)."""
    out = {}
    for name, tower in (("image", variant.image), ("text", variant.text)):
        rels = (
            [tower.file.format(batch=b) for b in tower.batch_sizes]
            if "{batch}" in tower.file
            else [tower.file]
        )
        rels += [r[:-4] + ".bin" for r in rels if r.endswith(".xml")]
        out[name] = (
            sum(bundle.path_of(r).stat().st_size for r in rels if bundle.path_of(r).exists()) / 1e6
        )
    out["total"] = out["image"] + out["text"]
    return out


def fp32_onnx(bundle: Bundle) -> Variant | None:
    """The bundle's fp32 ONNX variant: the graph MACs are counted on."""
    for v in bundle.variants:
        if v.backend == "onnx" and v.precision == "fp32":
            return v
    return None


def checkpoint_path(bundle: Bundle, override: str | os.PathLike | None = None) -> Path | None:
    """Where the bundle's source checkpoint is (for the torch baseline), if it still exists."""
    if override:
        p = Path(override).expanduser()
        if not p.exists():
            raise ModelNotFoundError(f"--checkpoint {p} does not exist.")
        return p
    src = bundle.manifest.get("source") or {}
    if src.get("kind") in ("hf-checkpoint", "open_clip-checkpoint") and src.get("path"):
        p = Path(src["path"]).expanduser()
        if p.exists():
            return p
    return None


def load_torch(path: Path):
    """The transformers CLIPModel (fp32, eval) of a checkpoint, via the converters' loader."""
    try:
        from converters.checkpoints import load_checkpoint
    except ImportError:
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(str(path)).float().eval()
    model, _info = load_checkpoint(path)
    return model.float().eval()


def load_baseline(path: Path, bundle: Bundle, flag: str):
    """``load_torch(path)``, refused (``InputError``) when its architecture is not the bundle's:
    another model's rate would make every × torch ratio wrong, or fail after the timing."""
    model = load_torch(path)
    try:
        from converters.checkpoints import architecture_of
    except ImportError:  # the runtime-only install: nothing to compare with
        return model
    want, have = bundle.manifest.get("architecture") or {}, architecture_of(model)
    diff = [f"{k} {have[k]} (the bundle's: {want[k]})" for k in want
            if k in have and have[k] != want[k]]  # fmt: skip
    if diff:
        raise InputError(f"{flag} is not the model of bundle {bundle.root}: {', '.join(diff[:4])}. "
                         "Pass the checkpoint the bundle was converted from with --checkpoint "
                         "DIR, or --baseline none.")  # fmt: skip
    return model


def describe(variant: Variant) -> dict[str, Any]:
    """The label copied into each measured row."""
    return {"variant": variant.id, "backend": variant.backend, "precision": variant.precision}


def baseline_id(variants: list) -> str:
    """The torch eager baseline's row label: ``torch-fp32``, unless a measured bundle variant
    (a ``torch.export`` one) has that id; then ``torch-eager-fp32``, so that rows, ratios and
    the CSV's memory join never mix the two up."""
    return "torch-eager-fp32" if any(v.id == "torch-fp32" for v in variants) else "torch-fp32"
