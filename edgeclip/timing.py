"""The one way edgeclip times a tower: the speed probe of ``backend="auto"``, ``edgeclip bench``
and the main job's speed line all call ``time_calls`` (or ``time_interleaved``, the same loop
over several towers in turn) + ``rate`` + ``pairs_per_s``, so their numbers agree. TinyCLIP's
method: towers timed separately on preprocessed inputs, pairs/s =
1 / (1/images_per_s + 1/texts_per_s)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class Settings:
    """How long to measure. ``quick()`` is a smoke run; the defaults give stable CPU numbers;
    ``probe()`` is what ``backend="auto"`` spends per variant on first use (then cached)."""

    warmup: int = 3
    repeats: int = 5
    min_time: float = 1.0
    max_repeats: int = 200
    latency_repeats: int = 30

    @classmethod
    def quick(cls) -> Settings:
        return cls(warmup=1, repeats=2, min_time=0.0, max_repeats=2, latency_repeats=5)

    @classmethod
    def probe(cls) -> Settings:
        return cls(warmup=5, repeats=15, min_time=0.4, max_repeats=400, latency_repeats=15)

    @classmethod
    def gpu(cls) -> Settings:
        """TinyCLIP's GPU protocol: 10 warm-up + 50 timed iterations."""
        return cls(warmup=10, repeats=50, min_time=0.0, max_repeats=50, latency_repeats=50)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pairs_per_s(images_per_s: float, texts_per_s: float) -> float:
    """TinyCLIP's pair rate: ``1 / (1/images_per_s + 1/texts_per_s)``."""
    if images_per_s <= 0 or texts_per_s <= 0:
        return 0.0
    return 1.0 / (1.0 / images_per_s + 1.0 / texts_per_s)


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    min_time: float = 0.0,
    max_repeats: int | None = None,
    sync: Callable[[], None] | None = None,
) -> np.ndarray:
    """Seconds per call of ``fn`` after ``warmup`` calls; ``sync`` waits for async devices (CUDA)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times: list[float] = []
    cap = max(repeats, max_repeats or repeats)
    start_all = time.perf_counter()
    while len(times) < cap:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= repeats and time.perf_counter() - start_all >= min_time:
            break
    return np.asarray(times, dtype=np.float64)


def time_interleaved(
    fns: list[Callable[[], Any]],
    *,
    warmup: int,
    repeats: int,
    min_time: float = 0.0,
    max_repeats: int | None = None,
) -> list[np.ndarray]:
    """Seconds per call of each of ``fns``, timed in turn call by call (A B C A B C ...).

    A shared or virtual CPU has slow spells of tens of seconds (the 2-core EPYC VM with AVX-512
    VNNI: onnx-int8 10.65 ms a call in fast spells, 18.39 ms in slow ones, ``cpu_spells.md``); timed one after the other, two towers can
    land in different spells and their ratio then says more about the spell than about them.
    Interleaved, every tower sees the same mix. ``min_time`` is per function, as in
    ``time_calls``, so the whole takes about ``len(fns) * min_time``."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    cap = max(repeats, max_repeats or repeats)
    start_all = time.perf_counter()
    while len(times[0]) < cap:
        for fn, got in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            got.append(time.perf_counter() - t0)
        if len(times[0]) >= repeats and time.perf_counter() - start_all >= min_time * len(fns):
            break
    return [np.asarray(t, dtype=np.float64) for t in times]


def rate(times: np.ndarray, batch: int) -> float:
    """Items per second of a typical call: ``batch / median seconds per call``.

    TinyCLIP divides total items by total time; on a quiet machine the two agree, but one call
    preempted by another process (a 100 ms stall among 11 ms calls) moves a mean by 10 % or
    more, and made two speed probes in a row disagree by 1.5×. The median ignores such calls.
    """
    if len(times) == 0:
        return 0.0
    median = float(np.median(times))
    return batch / median if median > 0 else 0.0


def sample_inputs(n: int, image_size: int, context_length: int = 77, seed: int = 0):
    """``n`` preprocessed-looking images (float32 N,3,S,S) and ``n`` tokenized prompts (int64)."""
    from .tokenizer import tokenize

    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((n, 3, image_size, image_size), dtype=np.float32)
    words = ["cat", "dog", "red sports car", "bowl of ramen", "mountain lake at dawn", "bicycle"]
    prompts = [f"a photo of a {words[i % len(words)]}." for i in range(n)]
    ids = tokenize(prompts, context_length=context_length).astype(np.int64)
    return pixels, ids


def tower_pairs_per_s(run_image: Callable, run_text: Callable, pixels: np.ndarray,
                      ids: np.ndarray, batch: int, settings: Settings) -> dict[str, float]:  # fmt: skip
    """images/s, texts/s and pairs/s of two towers at one batch size."""
    kw = dict(warmup=settings.warmup, repeats=settings.repeats, min_time=settings.min_time,
              max_repeats=max(settings.repeats, settings.max_repeats))  # fmt: skip
    ips = rate(time_calls(lambda: run_image(pixels[:batch], batch), **kw), batch)
    tps = rate(time_calls(lambda: run_text(ids[:batch], batch), **kw), batch)
    return {"images_per_s": ips, "texts_per_s": tps, "pairs_per_s": pairs_per_s(ips, tps)}
