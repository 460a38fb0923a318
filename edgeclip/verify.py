"""On-device verification: every variant is gated on the machine that runs it, once per host.

A bundle built and gated on one CPU can behave differently on another: INT8 kernels differ
between AVX2 (saturating 16-bit pair sums), AVX-512 VNNI, AMX and Arm. So the first time a
variant is used on a host, its probe set (``edgeclip.probeset``) runs through it and the one
gate (``edgeclip.gate``) compares the result with the reference embeddings stored at
conversion. The verdict, the numbers, the time taken and the batch invariance measured are
cached per host in ``edgeclip_home()/device_checks.json`` (atomic writes under a lock file,
so several processes can share it; a corrupt file is ignored and rewritten).

The host is what decides the kernels: CPU model and ISA flags, OS and architecture, the
backend's package version and the provider or device the session actually used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import gate
from .backends.catalog import BY_NAME
from .bundle import Bundle, Variant
from .errors import InputError
from .paths import edgeclip_home
from .probeset import Probe

CACHE_NAME = "device_checks.json"
#: ISA flags that change which INT8/fp16 kernels run (x86 and Arm names from /proc/cpuinfo)
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "fphp")  # fmt: skip
#: how many probe inputs are also run alone to measure batch invariance
N_ALONE = 3


class VerificationError(InputError):
    """A variant that missed its accuracy gate on this host was asked for by name."""


def cpu_identity() -> dict[str, Any]:
    """CPU model and the kernel-relevant ISA flags of this machine, plus any runtime variable
    that narrows them (``ONEDNN_MAX_CPU_ISA=AVX2`` on an AMX Xeon runs other kernels)."""
    from .settings import kernel_overrides

    model, isa = _cpu()
    overrides = kernel_overrides()
    return {"cpu": model, "isa": list(isa), **({"kernel_overrides": overrides} if overrides else {})}


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, tuple[str, ...]]:
    """Read once per process: the CPU does not change, and every session open asks."""
    # /proc/cpuinfo first: platform.processor() runs `uname -p` in a subprocess on Linux (10 ms
    # of every start) and answers just "x86_64" on some distributions.
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return model, tuple(sorted(flags.intersection(KERNEL_FLAGS)))


def widest_isa(isa: list[str]) -> str:
    """One word for the INT8 kernel family: amx, avx512-vnni, avx512, avx2, arm-dotprod, ..."""
    for flag, word in (("amx_int8", "amx"), ("amx_tile", "amx"), ("avx512_vnni", "avx512-vnni"),
                       ("avx_vnni", "avx-vnni"), ("avx512f", "avx512"), ("avx2", "avx2"),
                       ("i8mm", "arm-i8mm"), ("asimddp", "arm-dotprod"), ("asimd", "arm-neon")):  # fmt: skip
        if flag in isa:
            return word
    return "generic"


def host_identity(backend: str, device_used: str) -> dict[str, Any]:
    """Everything that decides which kernels a variant runs on this host."""
    from .versions import package_version

    version = package_version(BY_NAME[backend].package if backend in BY_NAME else backend)
    version = version or "unknown"
    return {**cpu_identity(), "os": platform.system(), "machine": platform.machine(),
            "backend": backend, "backend_version": version, "device": device_used,
            "session_settings": session_settings(backend)}  # fmt: skip


def session_settings(backend: str) -> dict[str, str | None]:
    """The environment settings that change what a ``backend`` session computes or how fast:
    a verdict or timing made under other values is not reused."""
    from . import settings

    prefix = {"onnx": "EDGECLIP_ORT_", "openvino": "EDGECLIP_OV_"}.get(backend)
    if prefix is None:
        return {}
    return {name: settings.get(name) for name in settings.SETTINGS
            if name.startswith(prefix) and name not in ("EDGECLIP_ORT_LOG_LEVEL", "EDGECLIP_ORT_CACHE")}  # fmt: skip


def _key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _session_device(towers: tuple[Any, Any], default: str) -> str:
    """Open both towers (so the check times the probe, not session builds); the device used."""
    towers[0].warm()
    towers[1].warm()
    first = towers[0].tower.batch_sizes[0] if towers[0].tower.batch_sizes else None
    return str(getattr(towers[0].session(first), "device", None) or default)


def requested_device(towers: tuple[Any, Any]) -> str:
    """The device the runners were opened for (``auto``, ``cpu``, ``cuda``, ...)."""
    return towers[0].device


def check(variant: Variant, probe: Probe, towers: tuple[Any, Any]) -> dict[str, Any]:
    """Run the probe through ``towers`` (the variant's runners) and gate it; also time it and
    measure batch invariance (the first ``N_ALONE`` inputs alone vs inside the batch)."""
    image, text = towers
    start = time.perf_counter()
    try:
        img = image(probe.pixels, len(probe.pixels))
        txt = text(probe.ids, len(probe.ids))
        k = min(N_ALONE, len(probe.pixels), probe.n_texts)
        alone_i, alone_t = image(probe.pixels[:k], 1), text(probe.ids[:k], 1)
    except InputError:  # this process's settings are wrong, not the variant: no verdict
        raise
    except Exception as exc:  # noqa: BLE001 - a variant that cannot run here fails its gate
        return _error_result(probe, exc, start)
    n, th = probe.n_texts, gate.recorded_thresholds(variant.gate)  # the conversion's own bar
    measured = gate.parity(img, txt[:n], txt[n:], probe.ref_image, probe.ref_text[:n],
                           probe.ref_text[n:], probe.reference, th["top1_tie_margin"])  # fmt: skip
    drift = max(gate.batch_drift(alone_i, img[:k]), gate.batch_drift(alone_t, txt[:k]))
    return {
        "parity": measured,
        "gate": gate.decide(measured, th),
        "batch_drift": drift,
        "batch_invariant": drift <= gate.BATCH_INVARIANCE_TOLERANCE,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _error_result(probe: Probe, exc: Exception, start: float) -> dict[str, Any]:
    """A failed check for a variant whose session cannot be built or run on this host."""
    # Capped for the cache file, but wide enough to keep the runtime's own reason: a
    # GraphOpenError puts the (long) graph path and variant first.
    measured: dict[str, Any] = {"reference": probe.reference,
                                "error": f"{type(exc).__name__}: {exc}"[:1200]}  # fmt: skip
    result = {"parity": measured, "gate": gate.decide(measured),
              "seconds": round(time.perf_counter() - start, 3)}  # fmt: skip
    if isinstance(exc, (MemoryError, InterruptedError)):
        result["transient"] = True  # says nothing of the variant: fails now, is never cached
    return result


class CheckCache:
    """``device_checks.json``: {host key: {"host": identity, "checks": {bundle|variant: result}}}."""

    def __init__(self, path: Path | None = None):
        self.path = path or edgeclip_home() / CACHE_NAME

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # missing, truncated or corrupt: start again

    def get(self, identity: dict[str, Any], entry: str) -> dict[str, Any] | None:
        host = self._read().get(_key(identity))
        checks = host.get("checks") if isinstance(host, dict) else None
        found = checks.get(entry) if isinstance(checks, dict) else None
        return found if isinstance(found, dict) and isinstance(found.get("gate"), dict) else None

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            try:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX)
            except ImportError:  # Windows: os.replace alone keeps the file whole
                pass
            yield

    def put(self, identity: dict[str, Any], entry: str, result: dict[str, Any]) -> None:
        """Merge one result in; an unwritable home only means checking again next time."""
        try:
            with self._locked():
                data = self._read()
                host = data.get(_key(identity))
                if not isinstance(host, dict) or not isinstance(host.get("checks"), dict):
                    host = data[_key(identity)] = {"host": identity, "checks": {}}  # damaged: anew
                host["checks"][entry] = result
                tmp = self.path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(data, indent=1))
                os.replace(tmp, self.path)
        except OSError:
            pass


@dataclass
class Status:
    """A variant's standing on this host: ``state`` is passed, failed or unverified."""

    variant: Variant
    state: str
    reason: str
    result: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    @property
    def usable(self) -> bool:
        return self.state == "passed"

    @property
    def batch_invariant(self) -> bool:
        return self.variant.batch_invariant and self.result.get("batch_invariant", True)


def _without_probe(variant: Variant) -> Status:
    if variant.is_reference:
        return Status(variant, "passed", "the bundle's reference variant (no probe set to re-check)")
    return Status(variant, "unverified", "not verified on this host: the bundle has no probe set "
                  "(re-convert it, or run `edgeclip verify BUNDLE --refresh`)")  # fmt: skip


def known_status(bundle: Bundle, variant: Variant, device: str, cache: CheckCache | None = None,
                 probe: Probe | None = None) -> Status | None:  # fmt: skip
    """The variant's standing on this host when it is known without opening a session (its
    conversion gate, a bundle without a probe set, a cached check); None: only a check can tell."""
    if not variant.passed and not variant.is_reference:
        return Status(variant, "failed", f"failed its gate at conversion: {variant.gate.get('reason')}")
    if probe is None and not bundle.manifest.get("probe"):
        return _without_probe(variant)
    # Keyed by the device asked for, so a cached verdict costs no session build; the device
    # that really ran (ONNX Runtime can fall back silently) is recorded in the result.
    identity = host_identity(variant.backend, device)
    result = (cache or CheckCache()).get(identity, f"{bundle.digest}|{variant.id}")
    return None if result is None else _from_result(variant, result, identity, cached=True)


def _from_result(variant: Variant, result: dict[str, Any], identity: dict[str, Any],
                 cached: bool) -> Status:  # fmt: skip
    identity = {**identity, "device_used": result.get("device_used")}
    verdict = result["gate"]
    state = "passed" if verdict.get("passed") else "failed"
    reason = "passed on this host" if state == "passed" else f"failed on this host: {verdict.get('reason')}"
    return Status(variant, state, reason, result, identity, cached)


def status(bundle: Bundle, variant: Variant, towers: tuple[Any, Any],
           cache: CheckCache | None = None, probe: Probe | None = None) -> Status:  # fmt: skip
    """Look up (or run once, then cache) the on-device check of ``variant`` on this host."""
    cache = cache or CheckCache()
    known = known_status(bundle, variant, requested_device(towers), cache, probe)
    if known is not None:
        return known
    # Loaded only on a miss: reading and normalising the probe set cost 40 ms of each start.
    probe = probe or Probe.load(bundle)
    start = time.perf_counter()
    try:
        used: str | None = _session_device(towers, "cpu")
    except InputError:  # this process's settings are wrong, not the variant: no verdict
        raise
    except Exception as exc:  # noqa: BLE001 - a graph this host's runtime cannot compile fails here
        result, used = _error_result(probe, exc, start), None
    else:
        result = check(variant, probe, towers)
    result["device_used"] = used
    result["checked"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    identity = host_identity(variant.backend, requested_device(towers))
    if not result.get("transient"):
        cache.put(identity, f"{bundle.digest}|{variant.id}", result)
    return _from_result(variant, result, identity, cached=False)


def refusal(st: Status) -> VerificationError:
    """The error for an explicit request of a variant that failed on this host."""
    th = (st.result.get("gate") or st.variant.gate or {}).get("thresholds") or gate.THRESHOLDS
    par = st.result.get("parity") or st.variant.parity or {}
    numbers = ", ".join(f"{k} {par[k]}" for k in ("image_cosine_mean", "text_cosine_mean",
                        "top1_agreement_tie_tolerant") if k in par) or par.get("error", "n/a")  # fmt: skip
    where = f"{st.host.get('cpu', 'this host')} ({widest_isa(st.host.get('isa', []))})" if st.host else "conversion"
    return VerificationError(
        f"variant {st.variant.id!r} {st.reason}. Measured on {where}: {numbers}; thresholds: "
        f"cosine mean ≥ {th.get('cosine_mean')}, top-1 agreement ≥ {th.get('top1_agreement')}. "
        "Pick another variant (`edgeclip verify BUNDLE` lists them), or pass verify=False "
        "(--no-verify) to run it anyway."
    )


def summarise(statuses: list[Status]) -> list[dict[str, Any]]:
    """Rows for ``edgeclip verify`` / ``info``: numbers, time and batch invariance per variant."""
    rows = []
    for st in statuses:
        par = st.result.get("parity") or {}
        rows.append({
            "variant": st.variant.id, "state": st.state, "reason": st.reason,
            "image_cosine_mean": par.get("image_cosine_mean"),
            "text_cosine_mean": par.get("text_cosine_mean"),
            "top1_agreement": par.get("top1_agreement_tie_tolerant"),
            "batch_drift": st.result.get("batch_drift"),
            "batch_invariant": st.batch_invariant if st.result else None,
            "seconds": st.result.get("seconds"), "cached": st.cached,
        })  # fmt: skip
    return rows

