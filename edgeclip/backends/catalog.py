"""Each backend described once; every registry (runtime modules, aliases, auto order, package
versions, converter builders, INT8 searches, conversion dependencies) is derived from ``SPECS``.

Adding a backend = one runtime module (``edgeclip/backends/<name>.py``), one converter module
(``converters/<name>_variants.py``) and one ``BackendSpec`` here. Converter modules are named as
strings: the runtime never imports them (``edgeclip.stages``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: every precision a variant can have; ``int8`` is an accuracy-aware search over configurations
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int8-static", "int8-weights")


@dataclass(frozen=True)
class BackendSpec:
    """What edgeclip knows about one backend, runtime and converter side."""

    name: str
    module: str  #: the runtime module (defines ``Backend``)
    package: str  #: the distribution whose version identifies the runtime
    extra: str  #: ``pip install edgeclip[<extra>]`` installs the runtime
    aliases: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    converter: str | None = None  #: ``converters.<converter>`` builds its variants
    builders: dict[str, str] = field(default_factory=dict)  #: precision → builder function
    search: bool = False  #: ``int8`` searches the converter module's ``INT8_CANDIDATES``
    convert_deps: tuple[tuple[str, str], ...] = ()  #: (import name, pip name) to convert
    convert_extra: str = "convert"
    extra_packages: tuple[str, ...] = ()  #: other distributions that change its kernels


SPECS: tuple[BackendSpec, ...] = (
    BackendSpec(
        "onnx", "edgeclip.backends.onnxruntime", "onnxruntime", "onnx", ("ort", "onnxruntime"),
        (".onnx",), "quantize_onnx",
        {"fp16": "build_fp16", "int8-dynamic": "build_int8_dynamic",
         "int8-static": "build_int8_static", "int8-weights": "build_int8_weights"},
        search=True, convert_deps=(("onnxruntime", "onnxruntime"),),
        extra_packages=("onnxruntime-gpu",),
    ),
    BackendSpec(
        "openvino", "edgeclip.backends.openvino", "openvino", "openvino", ("ov",),
        (".xml", ".onnx"), "openvino_variants",
        {"fp32": "build_fp32", "fp16": "build_fp16", "int8-static": "build_int8_ptq",
         "int8-weights": "build_int8_weights"},
        search=True, convert_deps=(("openvino", "openvino"), ("nncf", "nncf")),
        convert_extra="convert-openvino",
    ),
    BackendSpec(
        "litert", "edgeclip.backends.litert", "ai-edge-litert", "litert", ("tflite",),
        (".tflite",), "litert_variants",
        {"fp32": "build_fp32", "int8-dynamic": "build_int8_dynamic",
         "int8-weights": "build_int8_weights", "int8-static": "build_int8_static"},
        search=True,
        convert_deps=(("litert_torch", "litert-torch"), ("ai_edge_quantizer", "ai-edge-quantizer"),
                      ("ai_edge_litert", "ai-edge-litert"), ("torch", "torch")),
        convert_extra="convert-litert",
    ),
    BackendSpec(
        "torch", "edgeclip.backends.torch", "torch", "convert", (), (".pt2",), "gate",
        {"fp32": "build_torch_fp32"}, convert_deps=(("torch", "torch"),),
    ),
)  # fmt: skip

BY_NAME: dict[str, BackendSpec] = {s.name: s for s in SPECS}
#: backend name → runtime module
MODULES: dict[str, str] = {s.name: s.module for s in SPECS}
#: aliases users type → backend name
ALIASES: dict[str, str] = {a: s.name for s in SPECS for a in s.aliases}
#: the order ``backend="auto"`` tries when no speed probe decides
PREFERENCE: tuple[str, ...] = tuple(s.name for s in SPECS)
#: distributions whose versions identify this host's kernels (speed probe, device checks)
PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(
    p for s in SPECS for p in (s.package, *s.extra_packages)))  # fmt: skip


def builder_registry() -> dict[tuple[str, str], str]:
    """(backend, precision) → ``"module:function"`` under ``converters``."""
    return {(s.name, prec): f"{s.converter}:{func}"
            for s in SPECS for prec, func in s.builders.items()}  # fmt: skip


def search_modules() -> dict[str, str]:
    """Backends whose ``int8`` is a search → the converter module holding the candidates."""
    return {s.name: s.converter for s in SPECS if s.search and s.converter}
