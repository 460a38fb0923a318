"""``backend="auto"``: the fastest variant that passed its gate on *this* host, by measurement.

Every variant of every installed backend that is not known to fail here is a candidate, fp16
included: no fixed rule table decides (which precision wins depends on the CPU: OpenVINO fp16
ran 2.6× its fp32 on an AMX Xeon and slower on an AVX2 EPYC). Each candidate is timed at
batch 1 with the function ``edgeclip bench`` uses (``edgeclip.timing``: 5 warm-ups, then in 3
interleaved rounds ≥ 15 image calls and ≥ 0.4 s, and as many text calls; median per tower,
pairs/s = 1 / (1/images_per_s + 1/texts_per_s)). Rates within 5 % of the fastest are a tie,
won by the smallest weights, so probe noise does not flip the choice. Only the winner runs its
on-device check (the next one if it fails). The result is cached in
``edgeclip_home()/probe.json`` per host and bundle. ``EDGECLIP_PROBE=0`` skips timing and
falls back to ``PRECISION_ORDER`` within the backend preference order.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .bundle import Bundle, Variant
from .errors import InputError
from .paths import edgeclip_home

PRECISION_ORDER = ("int8", "int8-static", "int8-dynamic", "fp32", "fp16", "int8-weights")
from .backends.catalog import PACKAGES as _PACKAGES  # noqa: E402


def precision_rank(precision: str) -> int:
    """Position of a precision in the rule table (unknown precisions last)."""
    return (
        PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)
    )


# Two probes in a row differ by 1.04-1.07x at most per variant on a quiet 2-core AMX Xeon
# (benchmarks/results/*/probe_stability.json), so rates this close are a tie, not a ranking.
TIE_MARGIN = 0.05
_BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2}  # every int8 precision: 1


def fastest(variants: list[Variant], rates: dict[str, float], backends: list[str]) -> Variant:
    """The variant to serve: of those within ``TIE_MARGIN`` of the fastest rate, the one with
    the smallest weights, then backend preference, then the rule table's precision order.
    The tie-break never looks at the rates, so noise between two probes does not flip the
    choice between variants of about the same speed."""
    top = max(rates.get(v.id, 0.0) for v in variants)
    tied = [v for v in variants if rates.get(v.id, 0.0) >= top / (1 + TIE_MARGIN)]
    rank = {b: i for i, b in enumerate(backends)}
    return min(tied, key=lambda v: (_BYTES_PER_WEIGHT.get(v.precision, 1),
                                    rank.get(v.backend, len(rank)), precision_rank(v.precision)))  # fmt: skip


def _always(_: Variant) -> bool:
    return True


def best_per_backend(
    variants: list[Variant], backends: list[str], usable: Callable[[Variant], bool] = _always
) -> list[Variant]:
    """For each backend in order, its first usable variant in the rule table's order.

    ``usable`` is asked lazily (it may run the on-device check), best precision first.
    """
    out = []
    for backend in backends:
        mine = sorted((v for v in variants if v.backend == backend),
                      key=lambda v: precision_rank(v.precision))  # fmt: skip
        best = next((v for v in mine if usable(v)), None)
        if best is not None:
            out.append(best)
    return out


def host_key() -> str:
    """CPU model, core count, machine and runtime versions: what makes a probe result valid."""
    from .verify import cpu_identity, session_settings
    from .versions import package_version

    cpu = cpu_identity()["cpu"]
    versions = [f"{k}={v}" for b in ("onnx", "openvino") for k, v in session_settings(b).items()]
    versions += [f"{pkg}={package_version(pkg)}" for pkg in _PACKAGES if package_version(pkg)]
    return f"{platform.machine()}|{cpu}|{os.cpu_count()}|" + ",".join(versions)


def _bundle_key(bundle: Bundle, threads: int | None, device: str) -> str:
    manifest = json.dumps(bundle.manifest.get("files", {}), sort_keys=True).encode()
    return f"{hashlib.sha256(manifest).hexdigest()[:16]}|threads={threads}|device={device}"


def _probe_inputs(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    from .tokenizer import Tokenizer

    size = int(bundle.preprocess.get("image_size", 224))
    ctx = int(bundle.tokenizer.get("context_length", 77))
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    tok = bundle.tokenizer.get("file")
    ids = Tokenizer(bundle.path_of(tok) if tok else None, context_length=ctx)(["a photo of a cat"])
    return pixels, ids


def probe_hold(n: int) -> int:
    """How many of ``n`` candidates the probe keeps open at once (``EDGECLIP_PROBE_HOLD``)."""
    from .errors import InputError

    raw = settings.get("EDGECLIP_PROBE_HOLD") or "auto"
    if raw == "auto":
        return n if _available_bytes() >= 4 << 30 else min(n, 2)
    if not raw.isdigit() or int(raw) < 2:
        raise InputError(f"EDGECLIP_PROBE_HOLD={raw!r}: use auto, or a whole number ≥ 2 (two "
                         "variants are timed head to head)")  # fmt: skip
    return min(n, int(raw))


def _available_bytes() -> int:
    """MemAvailable from /proc/meminfo; where there is none, assume room for everything."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def probe_rates(
    bundle: Bundle,
    variants: list[Variant],
    threads: int | None,
    device: str,
    towers: Callable[[Variant], tuple] | None = None,
    rounds: int = 3,
    release: Callable[[Variant], None] | None = None,
    hold: int | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Batch-1 pairs/s of each variant on this host, and the errors of those that cannot run.

    Variants are timed in groups of ``hold`` (default: all at once) with ``edgeclip.timing``
    (``Settings.probe()``) in ``rounds`` interleaved rounds (A, B, C, A, B, C, ...), so a burst of
    load from another process lands on every member. The fastest of a group stays open and
    meets the next group; the others are dropped (and ``release``d) before it opens, so at most
    ``hold`` variants' sessions exist at once. A variant's rate is the median of all its calls.
    """
    from .timing import Settings
    from .towers import open_towers

    cfg, inputs = Settings.probe(), _probe_inputs(bundle)
    hold = len(variants) if hold is None else max(2, hold)
    calls: dict[str, tuple[list, list]] = {}
    errors: dict[str, str] = {}
    pending, held = list(variants), None  # held: (variant, runners) of the fastest so far
    while pending:
        group = [held] if held else []
        while pending and len(group) < hold:
            v = pending.pop(0)
            try:
                group.append((v, towers(v) if towers else open_towers(bundle.root, v, threads, device)))
            except InputError:  # this process's settings are wrong, not the variant
                raise
            except Exception as exc:  # a variant that cannot run here simply loses
                errors[v.id] = _error_text(exc)
        if all(b[0].id in calls for b in group):
            break  # only the held one is left: the rest could not open
        _time_bout(group, calls, errors, cfg, rounds, inputs)
        alive = [b for b in group if b[0].id not in errors]
        held = max(alive, key=lambda b: _rate(calls[b[0].id])) if alive else None
        for loser in [b[0] for b in group if held is None or b[0] is not held[0]]:
            if release:
                release(loser)
        group = alive = None  # the losers' sessions go now, before the next group opens
    rates = {v.id: 0.0 for v in variants}
    for vid, got in calls.items():
        if vid not in errors:
            rates[vid] = round(_rate(got), 2)
    return rates, errors


def _rate(got: tuple[list, list]) -> float:
    """Pairs/s from the per-call seconds of the image and the text tower."""
    from .timing import pairs_per_s, rate

    return pairs_per_s(rate(np.asarray(got[0]), 1), rate(np.asarray(got[1]), 1))


def _time_bout(bout: list, calls: dict, errors: dict, cfg: Any, rounds: int, inputs: tuple) -> None:
    """Time each (variant, (image, text)) of ``bout`` in ``rounds`` interleaved rounds, adding
    the per-call seconds to ``calls``; a variant failing mid-probe goes to ``errors``."""
    from .timing import time_calls

    pixels, ids = inputs
    per_round = -(-cfg.repeats // rounds)
    done = {v.id for v, _ in bout if v.id in calls}  # the held one, timed fully in an earlier bout
    for round_no in range(rounds):
        for v, (image, text) in bout:
            if v.id in errors or (v.id in done and round_no):
                continue  # one round of the held variant per bout: it meets every load burst
            warm = cfg.warmup if v.id not in calls else 1
            got = calls.setdefault(v.id, ([], []))
            kw = dict(warmup=warm, repeats=per_round, min_time=cfg.min_time / rounds,
                      max_repeats=cfg.max_repeats // rounds)  # fmt: skip
            try:
                timed = time_calls(lambda im=image: im(pixels, 1), **kw)
                got[0].extend(timed)
                # As many text calls as image calls, not as much time: the text tower is 10-15 %
                # of a pair's time, and its own 0.4 s took half of a first load's probe.
                kw.update(repeats=len(timed), min_time=0.0, max_repeats=len(timed))
                got[1].extend(time_calls(lambda tx=text: tx(ids, 1), **kw))
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - failing mid-probe also just loses
                errors[v.id] = _error_text(exc)


#: errors that say nothing of the variant: a probe that met one is not cached
_TRANSIENT = (MemoryError, InterruptedError)


def _error_text(exc: Exception) -> str:
    return (f"{type(exc).__name__}: " if isinstance(exc, _TRANSIENT) else "") + str(exc)[:200]


def _transient(errors: dict[str, str]) -> bool:
    return any(e.startswith(tuple(f"{t.__name__}:" for t in _TRANSIENT)) for e in errors.values())


def _read_cache(path: Path) -> dict:
    """``probe.json``, keeping only well-formed host entries (a hand-edited, truncated or
    foreign file is re-probed and rewritten, never trusted or crashed on)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {host: {k: e for k, e in entries.items() if _well_formed(e)}
            for host, entries in data.items() if isinstance(entries, dict)}  # fmt: skip


def _well_formed(entry: object) -> bool:
    rates = entry.get("pairs_per_s") if isinstance(entry, dict) else None
    return isinstance(rates, dict) and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 0 for r in rates.values()
    )


def choose(
    bundle: Bundle,
    variants: list[Variant],
    backends: list[str],
    threads: int | None = None,
    device: str = "auto",
    usable: Callable[[Variant], bool] = _always,
    towers: Callable[[Variant], tuple] | None = None,
    release: Callable[[Variant], None] | None = None,
    may_run: Callable[[Variant], bool] = _always,
) -> tuple[Variant, str] | None:
    """The fastest of the usable variants on this host, probed once and cached.

    Every variant that ``may_run`` (not already known to fail here) is timed; then only the
    winner is asked ``usable`` (which may run its on-device check, on the probe's sessions),
    the next one if it fails: checking the losers cost a seven-variant first load 4 s. None
    when no variant is usable. ``towers(variant)`` gives the runners to time;
    ``release(variant)`` drops a loser's sessions.
    """
    if settings.get("EDGECLIP_PROBE") == "0":
        firsts = best_per_backend(variants, backends, usable)
        return (firsts[0], (
            "EDGECLIP_PROBE=0: backend preference order, precision by the rule table "
            f"{list(PRECISION_ORDER)}"
        )) if firsts else None  # fmt: skip
    timed = [v for v in variants if v.backend in backends and may_run(v)]
    if len(timed) == 1 and usable(timed[0]):
        return timed[0], "the only variant not known to fail here"
    if len(timed) < 2:
        return None
    entry, how = _cached_or_probed(bundle, timed, threads, device, towers, release)
    ids = {v.id for v in timed}
    rates = {vid: r for vid, r in entry["pairs_per_s"].items() if vid in ids}
    best, refused = _first_usable(timed, rates, backends, usable, release)
    if best is None:
        return None
    table = ", ".join(f"{k} {r:.1f}" for k, r in sorted(rates.items(), key=lambda kv: -kv[1]))
    if refused:
        fast = f"fastest that passed its on-device check ({', '.join(refused)} failed here)"
    elif rates.get(best.id) == max(rates.values()):
        fast = "fastest"
    else:
        fast = f"within {TIE_MARGIN:.0%} of the fastest, smallest weights,"
    return best, f"{fast} on this host at batch 1 ({how}; pairs/s: {table})"


def _cached_or_probed(bundle: Bundle, timed: list[Variant], threads: int | None, device: str,
                      towers: Callable[[Variant], tuple] | None,
                      release: Callable[[Variant], None] | None) -> tuple[dict, str]:  # fmt: skip
    """This host's probe entry covering every ``timed`` variant (probing and caching it when
    missing), and how it was obtained, for the selection reason."""
    cache_path = edgeclip_home() / "probe.json"
    cache = _read_cache(cache_path)
    host, key = host_key(), _bundle_key(bundle, threads, device)
    entry = cache.get(host, {}).get(key)
    if entry and {v.id for v in timed} <= set(entry.get("pairs_per_s", {})):
        return entry, f"probed {entry.get('measured', '?')[:19]}, cached in {cache_path}"
    rates, errors = probe_rates(bundle, timed, threads, device, towers, release=release,
                                hold=probe_hold(len(timed)))  # fmt: skip
    entry = {"pairs_per_s": rates, "errors": errors,
             "measured": datetime.now(timezone.utc).isoformat()}  # fmt: skip
    if _transient(errors):
        return entry, "probed now (not cached: a variant ran out of memory or was interrupted)"
    cache.setdefault(host, {})[key] = entry
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only home only costs a re-probe next time
    return entry, "probed now"


def _first_usable(timed: list[Variant], rates: dict[str, float], backends: list[str],
                  usable: Callable[[Variant], bool],
                  release: Callable[[Variant], None] | None) -> tuple[Variant | None, list[str]]:  # fmt: skip
    """``fastest`` among those not yet refused, asking ``usable`` of each winner in turn; also
    the ids refused on the way."""
    left, refused = [v for v in timed if rates.get(v.id, 0.0) > 0], []  # 0: it could not run
    while left:
        best = fastest(left, rates, backends)
        if usable(best):
            return best, refused
        left.remove(best)
        refused.append(best.id)
        if release:
            release(best)
    return None, refused
