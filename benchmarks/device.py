"""What the numbers were measured on: CPU, ISA features, board, GPU, memory, OS and versions.

Every result file carries this report, so results from a Raspberry Pi, a Jetson and a laptop
can be merged and still be told apart. Everything here is best-effort and never raises: a
field that cannot be read is ``None``.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag → the name users know. x86 first, then Arm (aarch64 "Features").
_ISA_FLAGS = {
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "neon": "NEON",
    "asimddp": "dotprod",
    "asimdhp": "fp16 arith",
    "i8mm": "i8mm",
    "bf16": "BF16",
    "sve": "SVE",
    "sve2": "SVE2",
}

_PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "ai-edge-litert",
    "tflite-runtime",
    "torch",
    "transformers",
    "pillow",
)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _cpuinfo() -> dict[str, Any]:
    text = _read("/proc/cpuinfo") or ""
    model = None
    flags: set[str] = set()
    physical: set[tuple[str, str]] = set()
    phys_id = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "cpu model") and value and model is None:
            model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            physical.add((phys_id, value))
    if model is None:
        # Arm cores often have no "model name": report implementer/part instead
        impl = next(
            (
                ln.split(":")[1].strip()
                for ln in text.splitlines()
                if ln.lower().startswith("cpu part")
            ),
            None,
        )
        model = platform.processor() or (f"Arm part {impl}" if impl else None)
    isa = sorted({name for flag, name in _ISA_FLAGS.items() if flag in flags})
    if platform.machine() in ("aarch64", "arm64") and "NEON" not in isa:
        isa.append("NEON")  # mandatory on AArch64 even where cpuinfo omits it
    return {"model": model, "isa": isa, "physical_cores": len(physical) or None}


def _physical_cores_sysfs() -> int | None:
    seen = set()
    for p in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        core = _read(str(p / "core_id"))
        pkg = _read(str(p / "physical_package_id"))
        if core is not None:
            seen.add((pkg, core))
    return len(seen) or None


def _board() -> dict[str, Any]:
    model = _read("/proc/device-tree/model") or _read("/sys/firmware/devicetree/base/model")
    model = model.strip("\x00\n ") if model else None
    tegra = _read("/etc/nv_tegra_release")
    jetson = None
    if tegra:
        jetson = {"l4t": tegra.splitlines()[0].strip("# ").strip()}
        jetpack = _read("/etc/nv_jetpack_release") or None
        if jetpack:
            jetson["jetpack"] = jetpack.strip()
    return {
        "model": model,
        "raspberry_pi": model if model and "raspberry pi" in model.lower() else None,
        "jetson": jetson,
    }


def _gpu() -> list[dict[str, Any]]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def _ram_gb() -> float | None:
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 2)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 2)
    except (ValueError, OSError, AttributeError):
        return None


def _os() -> str:
    rel = _read("/etc/os-release") or ""
    pretty = next(
        (
            ln.split("=", 1)[1].strip('"')
            for ln in rel.splitlines()
            if ln.startswith("PRETTY_NAME=")
        ),
        None,
    )
    return f"{pretty or platform.system()} ({platform.system()} {platform.release()})"


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _providers() -> list[str] | None:
    try:
        ort = importlib.import_module("onnxruntime")
        return list(ort.get_available_providers())
    except Exception:  # any import failure means "not available", never a crash
        return None


def _openvino() -> dict[str, Any] | None:
    if importlib.util.find_spec("openvino") is None:
        return None
    try:
        ov = importlib.import_module("openvino")
        core = ov.Core()
        # on AMX/AVX-512-BF16 CPUs OpenVINO runs "fp32" graphs in bf16 unless told otherwise
        value = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
        hint = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        return {"devices": list(core.available_devices), "cpu_inference_precision": hint}
    except Exception:
        return None


def device_report() -> dict[str, Any]:
    """A JSON-able description of this machine and its runtimes (never raises)."""
    cpu = _cpuinfo()
    name = _board()["raspberry_pi"] or (_board()["jetson"] and "Jetson") or cpu["model"]
    return {
        "name": name or platform.node(),
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cpu": {
            "model": cpu["model"],
            "physical_cores": cpu["physical_cores"] or _physical_cores_sysfs(),
            "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "isa": cpu["isa"],
        },
        "board": _board(),
        "gpu": _gpu(),
        "ram_gb": _ram_gb(),
        "os": _os(),
        "python": platform.python_version(),
        "python_impl": sys.implementation.name,
        "versions": _versions(),
        # other processes competing for the cores make CPU numbers slower and noisier
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "onnxruntime_providers": _providers(),
        "openvino": _openvino(),
    }


def short_name(report: dict[str, Any]) -> str:
    """A one-line label for tables: board or CPU model, core count, GPU if any."""
    label = report.get("name") or "unknown"
    cores = (report.get("cpu") or {}).get("logical_cores")
    if cores:
        label += f" ({cores} cores)"
    gpus = report.get("gpu") or []
    if gpus:
        label += " + " + gpus[0]["name"]
    return label
