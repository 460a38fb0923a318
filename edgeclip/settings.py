"""Every environment variable edgeclip reads, in one place (the README's table is rendered from
``SETTINGS``). Values are read when asked for, not at import, so a changed environment counts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str
    #: the only values it takes (compared without case), or None for free text (paths, numbers)
    choices: tuple[str, ...] | None = None



SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("EDGECLIP_HOME", None, "where edgeclip keeps what it builds and measures "
            "(default `$XDG_CACHE_HOME/edgeclip`, i.e. `~/.cache/edgeclip`)"),
    Setting("EDGECLIP_CACHE", None, "bundles built from zoo models (default `$EDGECLIP_HOME/bundles`)"),
    Setting("EDGECLIP_DB", None, "the photo index `edgeclip index`, `search`, `dupes` and "
            "`serve --index` use when no `--db` is given (default `$XDG_DATA_HOME/edgeclip/photos.db`, "
            "i.e. `~/.local/share/edgeclip/photos.db`)"),
    Setting("EDGECLIP_ZOO", None, "extra zoo JSON files, `os.pathsep`-separated, merged over the shipped zoo"),
    Setting("EDGECLIP_PROBE", "1", "`0` skips timing variants for `backend=\"auto\"` (rule table only)",
            ("0", "1")),
    Setting("EDGECLIP_PROBE_HOLD", "auto", "how many variants the first `backend=\"auto\"` load keeps "
            "open at once while it times them: `auto` is all of them with ≥ 4 GiB of memory "
            "available, else 2 (a seven-variant bundle on an AMX Xeon: 846 MiB peak and 8.8 s "
            "with all, 419 MiB and 9.7 s with 2; `first_load.md`); a number ≥ 2 sets it"),
    Setting("EDGECLIP_HUB_TIMEOUT", "30", "seconds the Hugging Face hub may stay silent before a "
            "request is abandoned: each metadata request, and each read of a download's body (a "
            "stalled download is resumed up to 5 times, then fails with a message naming this "
            "variable); a number above 0, at most 86400 (a day)"),
    Setting("EDGECLIP_ORT_LOG_LEVEL", "3", "ONNX Runtime log severity (0 verbose … 4 fatal)",
            ("0", "1", "2", "3", "4")),
    Setting("EDGECLIP_ORT_SPINNING", "run", "how ONNX Runtime's threads wait for work: `run` "
            "busy-waits between the parallel sections of a run and stops when the run ends "
            "(idle sessions take no CPU); `1` keeps spinning after each run, so the image and "
            "text towers' pools spin against each other; `0` never spins, slower at batch 1 "
            "(`benchmarks/results/<host>/ort_settings.md`)", ("run", "0", "1")),
    Setting("EDGECLIP_ORT_ARENA_SHRINK", "1", "`0` lets ONNX Runtime keep its CPU arena at the "
            "size of the largest batch run so far, for the life of the session; by default it "
            "shrinks after each run. TinyCLIP-8M fp32, AMX Xeon: after batches of 32, 353 → 200 MiB "
            "resident when idle and 432 → 281 MiB peak, batch 32 4 % slower, batch 1 the same; "
            "after 48 random batches of 1-32, 383 → 285 MiB idle; but a batch grown one at a time "
            "from 1 to 32 ends at 368 against 306 (`benchmarks/results/xeon-amx-2core/ort_arena.md`)",
            ("0", "1")),
    Setting("EDGECLIP_ORT_CACHE", "1", "`0` re-optimises ONNX Runtime graphs at every load "
            "instead of caching the optimised graph per graph, ORT version and CPU in "
            "`$EDGECLIP_HOME/ort-cache`", ("0", "1")),
    Setting("EDGECLIP_OV_HINT", "LATENCY", "OpenVINO performance hint: LATENCY or THROUGHPUT",
            ("LATENCY", "THROUGHPUT")),
    Setting("EDGECLIP_OV_DYNAMIC_QUANT", "256", "OpenVINO CPU dynamic quantization group size "
            "for int8 variants: activations are quantized per group of that many inputs at run "
            "time, so weight-compressed MatMuls run int8 kernels (openvino-int8 images/s 72.9 → "
            "85.8 at batch 1 on an AVX-512 EPYC); `0` turns it off. The on-device check gates the result"),
    Setting("EDGECLIP_OV_BATCH_BUCKETS", "0", "`1` pads each OpenVINO batch to the next power of "
            "two, because the CPU plugin keeps memory for every shape it has run: 48 random batches "
            "of 1-32 on the AMX Xeon left openvino-int8 at 286 MiB instead of 462 (fp32: 392 "
            "instead of 461), at the cost of the padding (batch 24 runs as 32: 187 against 247 "
            "images/s; the pattern took 6 % longer on int8, 31 % on fp32); off by default "
            "(`benchmarks/results/xeon-amx-2core/openvino_shapes.md`)", ("0", "1")),
    Setting("EDGECLIP_OV_PRECISION", None, "OpenVINO inference precision for every variant "
            "(f32, bf16, f16); default: f32 for fp32 variants, the plugin's choice otherwise",
            ("f32", "bf16", "f16")),
)}  # fmt: skip


#: variables the runtimes read themselves (oneDNN inside OpenVINO and torch) that change which
#: kernels run: a verdict, timing or compiled cache made under other values is not reused
KERNEL_OVERRIDES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE",
                    "DNNL_DEFAULT_FPMATH_MODE")  # fmt: skip


def kernel_overrides() -> dict[str, str]:
    """The ``KERNEL_OVERRIDES`` that are set, with their values."""
    return {name: os.environ[name] for name in KERNEL_OVERRIDES if os.environ.get(name)}


def get(name: str) -> str | None:
    """The variable's value, else its documented default. A value outside the setting's
    ``choices`` raises ``InputError`` naming the variable and its values (never a silent
    reading as some other value); a choice comes back spelled as documented."""
    setting = SETTINGS[name]
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return setting.default
    if setting.choices is None:
        return value
    for choice in setting.choices:
        if value.strip().lower() == choice.lower():
            return choice
    raise InputError(
        f"environment variable {name}={value!r} is not one of {', '.join(setting.choices)}; "
        f"set one of those, or unset it for the default ({setting.default or 'none'})."
    )


def check_all() -> None:
    """Refuse any set variable with a value outside its choices, before any work starts."""
    for name in SETTINGS:
        get(name)


def markdown_table() -> str:
    rows = ["| variable | default | values (others are refused by name) | what it does |",
            "|---|---|---|---|"]  # fmt: skip
    rows += [f"| `{s.name}` | {f'`{s.default}`' if s.default else '–'} | "
             f"{', '.join(f'`{c}`' for c in s.choices) if s.choices else '–'} | {s.help} |"
             for s in SETTINGS.values()]  # fmt: skip
    return "\n".join(rows)
