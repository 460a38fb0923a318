"""Throughput and latency of the image and text towers, TinyCLIP's way.

Method (the same as TinyCLIP's ``measure_throughput.py``, so numbers are comparable):

* the image tower and the text tower are timed **separately**, on inputs that are already
  preprocessed (float32 pixels, int64 token ids): model-only throughput;
* each measurement does ``warmup`` untimed calls, then timed calls: at least ``repeats`` and
  for at least ``min_time`` seconds (at most ``max_repeats``);
* ``images_per_s = batch / median seconds per call`` (likewise ``texts_per_s``; TinyCLIP
  uses total items / total time, which one preempted call can move by 10 %);
* ``pairs_per_s = 1 / (1/images_per_s + 1/texts_per_s)``: the rate at which one image and one
  text could both be embedded, i.e. the harmonic combination of the two towers;
* latency percentiles (p50/p95/p99) come from the per-call times at batch 1.

Nothing here knows a backend: a tower is any ``fn(array) -> array``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# The timing primitives live in the runtime so the auto probe, the bench and the main job share them.
from edgeclip.timing import (  # noqa: E402,F401 - re-exported for the bench's modules
    Settings,
    pairs_per_s,
    rate,
    sample_inputs,
    time_calls,
    time_interleaved,
)


def latency_stats(times: np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean per-call latency in milliseconds, and the sample count."""
    ms = np.asarray(times) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": int(ms.size),
    }


Tower = Callable[[np.ndarray, int], Any]


def measure(
    label: dict[str, Any],
    run_image: Tower,
    run_text: Tower,
    pixels: np.ndarray,
    ids: np.ndarray,
    batch_sizes: list[int],
    settings: Settings,
    *,
    sync: Callable[[], None] | None = None,
    notes: Callable[[int], str | None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per batch size: images/s, texts/s, pairs/s (+ latency at batch 1).

    ``run_image(array, batch)`` / ``run_text(array, batch)`` embed one batch. ``label`` is
    copied into every row (variant id, backend, precision, device). ``on_row`` sees each row
    as soon as it exists, so an interrupted run keeps what it measured.
    """
    rows = []
    for b in batch_sizes:
        if b > len(pixels):
            raise ValueError(f"batch {b} exceeds the {len(pixels)} sample inputs")
        x, t = pixels[:b], ids[:b]
        reps = max(settings.repeats, settings.latency_repeats) if b == 1 else settings.repeats
        kw = dict(
            warmup=settings.warmup,
            repeats=reps,
            min_time=settings.min_time,
            max_repeats=max(reps, settings.max_repeats),
            sync=sync,
        )
        ti = time_calls(lambda x=x, b=b: run_image(x, b), **kw)
        tt = time_calls(lambda t=t, b=b: run_text(t, b), **kw)
        row = _row(label, b, ti, tt, notes(b) if notes else None)
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def _row(label: dict[str, Any], b: int, ti: np.ndarray, tt: np.ndarray, note: str | None) -> dict:
    ips, tps = rate(ti, b), rate(tt, b)
    row = {**label, "batch_size": b, "images_per_s": ips, "texts_per_s": tps,
           "pairs_per_s": pairs_per_s(ips, tps), "image_ms_per_batch": float(np.median(ti) * 1000),
           "text_ms_per_batch": float(np.median(tt) * 1000), "image_calls": int(ti.size),
           "text_calls": int(tt.size), "note": note}  # fmt: skip
    if b == 1:
        row["latency"] = {"image": latency_stats(ti), "text": latency_stats(tt)}
    return row


def measure_interleaved(
    towers: list[tuple[dict[str, Any], Tower, Tower, Callable[[int], str | None] | None]],
    pixels: np.ndarray,
    ids: np.ndarray,
    batch_sizes: list[int],
    settings: Settings,
    *,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[list[dict[str, Any]]]:
    """``measure`` for several tower pairs at once, timed call by call in turn
    (``time_interleaved``), so each sees the same slow and fast spells of a shared machine;
    one list of rows (a row per batch size) per ``(label, run_image, run_text, notes)``."""
    rows: list[list[dict[str, Any]]] = [[] for _ in towers]
    for b in batch_sizes:
        x, t = pixels[:b], ids[:b]
        reps = max(settings.repeats, settings.latency_repeats) if b == 1 else settings.repeats
        kw = dict(warmup=settings.warmup, repeats=reps, min_time=settings.min_time,
                  max_repeats=max(reps, settings.max_repeats))  # fmt: skip
        images = time_interleaved([lambda ri=ri, x=x, b=b: ri(x, b) for _, ri, _, _ in towers], **kw)
        texts = time_interleaved([lambda rt=rt, t=t, b=b: rt(t, b) for _, _, rt, _ in towers], **kw)
        for k, (label, _, _, notes) in enumerate(towers):
            rows[k].append(_row(label, b, images[k], texts[k], notes(b) if notes else None))
            if on_row:
                on_row(rows[k][-1])
    return rows


def combine_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per batch size from several rounds of ``measure`` for the same tower pair.

    images/s and texts/s are each the median over rounds and pairs/s is recomputed from them;
    latency and call counts come from the round whose pairs/s is the median. Every round's
    pairs/s is kept in ``pairs_per_s_rounds``.
    """
    out = []
    for same_batch in zip(*rounds):
        order = sorted(range(len(same_batch)), key=lambda k: same_batch[k]["pairs_per_s"])
        row = dict(same_batch[order[len(order) // 2]])
        ips = float(np.median([r["images_per_s"] for r in same_batch]))
        tps = float(np.median([r["texts_per_s"] for r in same_batch]))
        b = row["batch_size"]
        row.update(images_per_s=ips, texts_per_s=tps, pairs_per_s=pairs_per_s(ips, tps),
                   image_ms_per_batch=1000.0 * b / ips if ips else 0.0,
                   text_ms_per_batch=1000.0 * b / tps if tps else 0.0, rounds=len(same_batch),
                   pairs_per_s_rounds=[r["pairs_per_s"] for r in same_batch])  # fmt: skip
        out.append(row)
    return out


def spell_advice(rows: list[dict], interleaved: bool, spread: float = 1.3) -> list[str]:
    """A note when rounds timed in turn disagree by more than ``spread``: the machine's speed
    comes in spells, so the ratios between variants depend on which one met a slow spell."""
    worst = max(((max(r["pairs_per_s_rounds"]) / min(r["pairs_per_s_rounds"]), r)
                 for r in rows if len(r.get("pairs_per_s_rounds") or []) > 1
                 and min(r["pairs_per_s_rounds"]) > 0), key=lambda x: x[0], default=None)  # fmt: skip
    if interleaved or worst is None or worst[0] <= spread:
        return []
    ratio, row = worst
    return [f"the rounds of {row['variant']} at batch {row['batch_size']} disagree by {ratio:.2f}x: "
            "this machine's speed comes in spells (benchmarks/cpu_spells.py shows them), so the "
            "ratios between variants depend on which met a slow one; rerun with --interleave"]


def run_interleaved(towers: list, rounds: int, inputs: tuple, sizes: list[int], settings: Settings,
                    add: Callable[[dict[str, Any]], None], bar: Any) -> None:  # fmt: skip
    """``edgeclip bench --interleave``: each round times every tower call by call in turn; the
    rows (each the median round) go to ``add``, on Ctrl-C too for the rounds completed."""
    measured: list[list[list[dict]]] = [[] for _ in towers]
    try:
        for r in range(rounds):
            bar.set_description(f"throughput, all interleaved, round {r + 1}/{rounds}")
            for k, rows in enumerate(measure_interleaved(towers, *inputs, sizes, settings)):
                measured[k].append(rows)
        bar.update(len(towers))
    finally:
        for per_round in measured:
            for row in combine_rounds(per_round) if per_round else []:
                add(row)


def chunk_note(sizes: tuple[int, ...] | None, b: int) -> str | None:
    """What a fixed-shape tower does with batch ``b`` (None when it takes ``b`` as is)."""
    if not sizes or b in sizes:
        return None
    fits = [s for s in sorted(sizes) if s <= b]
    if not fits:
        return f"padded to fixed batch {min(sizes)}"
    s = fits[-1]
    calls = -(-b // s)
    return f"chunked as {calls}×{s} (fixed batch sizes {list(sizes)})"


def torch_towers(model: Any, threads: int | None, device: str = "cpu", amp: bool = False):
    """(run_image, run_text, sync) for a transformers CLIPModel: eager, inference_mode.

    ``amp``: CUDA autocast to fp16, TinyCLIP's GPU setting. Inputs are moved to the device
    once per call shape and cached, so the timing is the model, not the host→device copy.
    """
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    model = model.to(device).eval()
    cache: dict[tuple, Any] = {}

    def dev(a: np.ndarray, kind: str):
        # keyed by the data pointer and shape (not id(), which Python reuses after GC)
        key = (a.__array_interface__["data"][0], a.shape, kind)
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            if kind == "t":  # as transformers users feed it (padding="longest"), not 77 wide;
                # causal attention + pooling at the end token: the same result
                used = np.flatnonzero((a != 0).any(axis=0))
                a = np.ascontiguousarray(a[:, : int(used[-1]) + 1] if used.size else a)
            cache[key] = torch.as_tensor(a).to(device)
        return cache[key]

    def ctx():
        if amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        import contextlib

        return contextlib.nullcontext()

    def run_image(x: np.ndarray, b: int):
        with torch.inference_mode(), ctx():
            return model.get_image_features(pixel_values=dev(x, "i"))

    def run_text(t: np.ndarray, b: int):
        with torch.inference_mode(), ctx():
            return model.get_text_features(input_ids=dev(t, "t"))

    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    return run_image, run_text, sync
