"""Registry of backend × precision variant builders, the INT8 search, and the gate around both.

The one entry point for ``bundle_writer.convert`` and ``edgeclip convert`` is
``build_variants(bundle_root, fp32_variant, model, backends=..., precisions=..., calibration=...)``:
it builds every requested variant into ``bundle_root`` (the converter's temporary directory),
measures each against the fp32 reference, and returns ``(kept, rejected)`` variant dicts.
Rejected variants' files are deleted (or kept and marked failed with ``keep_failed=True``);
either way the reason is logged and a failed variant is never auto-selected.

Precisions: ``fp32``, ``fp16``, ``int8`` (the accuracy-aware search: the fastest configuration
that passes the gate, recorded in ``options.search``), and the explicit INT8 flavours
``int8-dynamic``, ``int8-static``, ``int8-weights``.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip.backends import catalog
from edgeclip.errors import BackendUnavailableError, InputError

from .int8_pins import candidates, parse_int8_configs

#: (backend, precision) → "module:function" under ``converters``, from ``catalog.SPECS``
REGISTRY: dict[tuple[str, str], str] = catalog.builder_registry()
#: backends whose ``int8`` is a search over the module's ``INT8_CANDIDATES``
SEARCH_MODULES = catalog.search_modules()
PRECISIONS = catalog.PRECISIONS
BACKENDS = catalog.PREFERENCE
#: what each backend's converter needs: (import name, pip name)
CONVERT_DEPS = {s.name: list(s.convert_deps) for s in catalog.SPECS}
_ALIASES = catalog.ALIASES

Builder = Callable[..., dict[str, Any]]


def make_variant(
    vid: str,
    backend: str,
    precision: str,
    fp32_variant: dict[str, Any],
    file_pattern: str,
    *,
    batch_sizes: list[int] | None = None,
    io: dict[str, tuple[str, str]] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest variant dict; ``file_pattern`` has ``{tower}`` (and ``{batch}`` for fixed-batch graphs)."""
    towers = {}
    for tower in ("image", "text"):
        inp, out = (io or {}).get(
            tower, (fp32_variant[tower]["input"], fp32_variant[tower]["output"])
        )
        towers[tower] = {
            "file": file_pattern.replace("{tower}", tower),
            "input": inp,
            "output": out,
            "batch_sizes": list(batch_sizes) if batch_sizes else None,
        }
        if not batch_sizes and fp32_variant[tower].get("dynamic_sequence"):
            towers[tower]["dynamic_sequence"] = True  # derived graphs keep the source's axes
    return {
        "id": vid,
        "backend": backend,
        "precision": precision,
        **towers,
        "options": dict(options or {}),
    }


def parse_list(
    value: str | Iterable[str] | None,
    known: tuple[str, ...],
    what: str,
    aliases: dict[str, str] | None = None,
) -> list[str]:
    """``"onnx,openvino"`` or a list → validated names; unknown names raise ``InputError``."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for raw in items:
        name = (aliases or {}).get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in known:
            raise InputError(f"unknown {what} {raw!r}; choose from: {', '.join(known)}.")
        if name not in out:
            out.append(name)
    return out


def check_convert_deps(backend: str) -> None:
    """Raise ``BackendUnavailableError`` naming the packages a backend's converter still needs."""
    missing = [pip for mod, pip in CONVERT_DEPS[backend] if importlib.util.find_spec(mod) is None]
    if missing:
        raise BackendUnavailableError(
            f"converting to {backend} needs {', '.join(missing)}; install with "
            f"`pip install {' '.join(missing)}` (or `pip install "
            f"edgeclip[{catalog.BY_NAME[backend].convert_extra}]`)."
        )


def check_requested(backends: str | Iterable[str], precisions: str | Iterable[str]) -> None:
    """Refuse unknown or empty backend/precision lists and missing converter packages.

    Called before a checkpoint is loaded, so a typo costs no export.
    """
    backs = parse_list(backends, BACKENDS, "backend", _ALIASES)
    if not backs:
        raise InputError(f"--backend {backends!r} names no backend; choose from: {', '.join(BACKENDS)}.")
    precs = parse_list(precisions, PRECISIONS, "precision")
    if not precs:
        raise InputError(
            f"--precision {precisions!r} names no precision; choose from: {', '.join(PRECISIONS)}."
        )
    if not any(_offered(b, p) for b in backs for p in precs):
        # Not one variant could be built: refused now, not after an export that ships none.
        offers = "; ".join(f"{b}: {', '.join(p for p in PRECISIONS if _offered(b, p))}" for b in backs)
        raise InputError(f"--backend {backends!r} --precision {precisions!r}: no backend "
                         f"offers any of these precisions ({offers}); pick one of those.")  # fmt: skip
    for b in backs:
        check_convert_deps(b)


def _offered(backend: str, precision: str) -> bool:
    """Whether ``backend`` builds ``precision`` (the reference onnx-fp32 is always built)."""
    return ((backend, precision) == ("onnx", "fp32") or (backend, precision) in REGISTRY
            or (precision == "int8" and backend in SEARCH_MODULES))  # fmt: skip


def get_builder(backend: str, precision: str) -> Builder:
    """The builder function for a backend × precision (``InputError`` if there is none)."""
    ref = REGISTRY.get((backend, precision))
    if ref is None:
        have = sorted(p for b, p in REGISTRY if b == backend)
        raise InputError(
            f"no {backend} variant at precision {precision!r}; {backend} offers: {', '.join(have)}."
        )
    module, func = ref.split(":")
    return getattr(importlib.import_module(f"converters.{module}"), func)


def _remove(bundle_root: Path, variant_id: str) -> None:
    shutil.rmtree(Path(bundle_root) / variant_id, ignore_errors=True)


def _short(parity: dict[str, Any]) -> str:
    if "error" in parity:
        return parity["error"]
    return (
        f"image cos {parity['image_cosine_mean']:.4f}, text cos {parity['text_cosine_mean']:.4f}, "
        f"top-1 agreement {parity.get('top1_agreement_tie_tolerant', parity['top1_agreement']):.2%} "
        f"(raw {parity['top1_agreement']:.2%})"
    )


@dataclass
class _Job:
    """What every build in one ``build_variants`` call shares."""

    root: Path
    fp32_variant: dict[str, Any]
    model: Any
    calibration: Any
    ref: Any
    thresholds: dict[str, float] | None
    threads: int | None
    builder_options: dict[str, dict[str, Any]]
    log: Callable[[str], Any]
    int8_configs: dict[str, str]
    int8_fallback: bool

    def build(self, backend: str, builder: Builder, options: dict[str, Any]):
        """Build and gate one variant; a build error becomes a failed variant (reason = the error)."""
        from .gate import evaluate

        _remove(self.root, options["id"])
        opts = {**self.builder_options.get(backend, {}), **options}
        try:
            built = builder(self.root, self.fp32_variant, self.model, self.calibration, opts)
        except (InputError, BackendUnavailableError):
            raise
        except Exception as exc:  # noqa: BLE001 - converter failures vary; report, go on
            reason = f"build failed: {type(exc).__name__}: {exc}"
            return {
                "id": options["id"],
                "backend": backend,
                "options": {},
                "precision": options.get("precision"),
                "parity": {"error": reason},
                "gate": {"passed": False, "reason": reason},
            }
        return evaluate(
            self.root,
            built,
            self.calibration,
            self.ref,
            thresholds=self.thresholds,
            threads=self.threads,
        )


def search_int8(job: _Job, backend: str) -> dict[str, Any]:
    """Try the backend's INT8 candidates fastest first; keep the first that passes the gate.

    A configuration pinned in ``job.int8_configs`` (``converters.int8_pins``) is the only one
    tried, or the first with ``job.int8_fallback``. The result's ``options.config`` names the configuration kept and ``options.search`` lists
    every one tried with its numbers; if none passes, the last (safest) failure is returned.
    """
    module = importlib.import_module(f"converters.{SEARCH_MODULES[backend]}")
    vid = f"{backend}-int8"
    tried: list[dict[str, Any]] = []
    variant: dict[str, Any] = {}
    pinned = job.int8_configs.get(backend)
    for name, func, opts in candidates(module, pinned, job.int8_fallback):
        variant = job.build(
            backend, getattr(module, func), {**opts, "id": vid, "precision": "int8"}
        )
        ok = variant["gate"]["passed"]
        keys = (
            "image_cosine_mean",
            "text_cosine_mean",
            "top1_agreement",
            "top1_agreement_tie_tolerant",
        )
        tried.append(
            {
                "config": name,
                "passed": ok,
                "reason": variant["gate"]["reason"],
                **{k: variant["parity"].get(k) for k in keys},
            }
        )
        job.log(f"  {vid} [{name}]: {'pass' if ok else 'FAIL'} ({_short(variant['parity'])})")
        if ok:
            break
    variant["options"] = {
        **variant.get("options", {}),
        "config": tried[-1]["config"],
        "search": tried,
    }
    return variant


def build_variants(
    bundle_root: str | Path,
    fp32_variant: dict[str, Any],
    model: Any = None,
    *,
    backends: str | Iterable[str] = "onnx",
    precisions: str | Iterable[str] = "fp32,fp16,int8",
    calibration: Any = None,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
    keep_failed: bool = False,
    builder_options: dict[str, dict[str, Any]] | None = None,
    reference: Any = None,
    log: Callable[[str], Any] = print,
    int8_configs: str | dict[str, str] | None = None,
    int8_fallback: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Build, gate and return ``(kept, rejected)`` variant dicts for every backend × precision.

    ``bundle_root`` holds the ``onnx-fp32`` variant already (``fp32_variant`` is its dict).
    ``model`` is the transformers ``CLIPModel`` (torch fp32 reference; LiteRT converts from it);
    without it the reference is the onnx-fp32 graph and LiteRT is refused.
    ``calibration`` is a ``CalibrationData`` (default: the synthetic set at the model's size).
    ``builder_options`` per backend, e.g. ``{"litert": {"batch_sizes": [1, 8]}}``.
    ``reference``: the ``gate.Reference`` already computed on ``calibration`` (else computed here).
    ``int8_configs``: INT8 configurations pinned per backend (``"openvino=ptq-mlp-only"``); a
    pinned backend's ``int8`` builds and gates that configuration only (``int8_fallback``: that
    one first, then the rest of the search if it fails).
    Combinations a backend does not offer (e.g. litert fp16) are skipped with a message.
    """
    root = Path(bundle_root)
    backs = parse_list(backends, BACKENDS, "backend", _ALIASES)
    precs = parse_list(precisions, PRECISIONS, "precision")
    for b in backs:
        check_convert_deps(b)
    pins = parse_int8_configs(int8_configs)
    torch_model = model is not None and not isinstance(model, (str, Path))
    _require_torch_model(backs, torch_model)
    calibration, ref = _gate_inputs(
        root, fp32_variant, model, torch_model, calibration, reference, log
    )
    job = _Job(root, fp32_variant, model, calibration, ref, thresholds, threads,
               builder_options or {}, log, pins, int8_fallback)  # fmt: skip
    kept, rejected = [], []
    try:
        for backend in backs:
            for prec in precs:
                variant = _build_one(job, backend, prec)
                if variant is not None:
                    _keep_or_reject(job, variant, keep_failed, kept, rejected)
    finally:
        # Scratch files some builders share (LiteRT's fp32 conversions) never ship.
        shutil.rmtree(root / ".litert-fp32-src", ignore_errors=True)
    return kept, rejected


def _require_torch_model(backs: list[str], torch_model: bool) -> None:
    """Refuse LiteRT and torch variants without a torch model: they are exported from it."""
    for b in ("litert", "torch"):
        if b in backs and not torch_model:
            raise InputError(
                f"{b} variants are exported from the torch model: pass the checkpoint "
                f"(install torch + transformers), or drop {b} from --backend."
            )


def _gate_inputs(
    root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    torch_model: bool,
    calibration: Any,
    reference: Any,
    log: Callable[[str], Any],
) -> tuple[Any, Any]:
    """``(calibration, reference)``: those given, else the synthetic set and its embeddings."""
    from .calibration import load_calibration, preprocess_for
    from .gate import reference_embeddings

    if calibration is None:
        calibration = load_calibration(None, preprocess_for(fp32_variant, root, model), log=log)
    ref = reference or reference_embeddings(
        calibration, model if torch_model else None, root, fp32_variant
    )
    if ref.name != "torch-fp32":
        log(
            f"gate reference: {ref.name} under ONNX Runtime (no torch model given: checkpoint missing or torch not installed)"
        )
    return calibration, ref


def _build_one(job: _Job, backend: str, prec: str) -> dict[str, Any] | None:
    """Build and gate one backend × precision; None if skipped (the reference, or not offered)."""
    if (backend, prec) == ("onnx", "fp32"):
        return None  # the bundle writer's own variant
    if prec == "int8" and backend in SEARCH_MODULES:
        return search_int8(job, backend)
    if (backend, prec) in REGISTRY:
        return job.build(backend, get_builder(backend, prec), {"id": f"{backend}-{prec}"})
    job.log(f"{backend}-{prec}: {backend} has no {prec} variant, skipped")
    return None


def _keep_or_reject(
    job: _Job, variant: dict[str, Any], keep_failed: bool, kept: list, rejected: list
) -> None:
    """Log the gate's verdict and file the variant under ``kept`` or ``rejected``."""
    if variant["gate"]["passed"]:
        kept.append(variant)
        job.log(f"{variant['id']}: gate passed ({_short(variant['parity'])})")
        return
    job.log(f"{variant['id']}: gate FAILED, not shipped: {variant['gate']['reason']}")
    if keep_failed and "image" in variant:
        kept.append(variant)  # marked failed: listed, never auto-selected
    else:
        _remove(job.root, variant["id"])  # a rejected variant's files never ship
        rejected.append(variant)
