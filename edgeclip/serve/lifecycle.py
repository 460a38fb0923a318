"""The model's life in the server: loaded on first use (or at start), unloaded when idle.

A load opens only the tower the first request needs; the other opens on its first use. With
``image_idle_ttl_s`` the image tower alone is unloaded after that long without image requests
(the worker is replaced by one holding the text tower only), so text search stays loaded while
the memory of indexing comes back: what Immich's users ask of CLIP on small boards.

Loading, every model call and unloading run on one thread, in order, so they never race:
a request that arrives while the model is unloaded simply loads it again. Unloading measures
resident memory before and after, so ``/health`` and the log show what really came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .metrics import Metrics, rss_bytes
from .worker import (
    BOTH_TOWERS,
    TOWER_OF_OP,
    InProcessRunner,
    ModelSpec,
    SubprocessRunner,
    WorkerFailed,
    release_memory,
)

log = logging.getLogger("edgeclip.serve")


class ModelHost:
    """Owns the runner of one model and the thread that talks to it."""

    def __init__(
        self, spec: ModelSpec, *, idle_ttl_s: float | None, in_process: bool, metrics: Metrics,
        image_idle_ttl_s: float | None = None,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.idle_ttl_s = idle_ttl_s
        self.image_idle_ttl_s = image_idle_ttl_s
        self.in_process = in_process
        self.metrics = metrics
        self.info: dict[str, Any] | None = None  # kept across unloads: the same model reloads
        self.last_unload: dict[str, Any] | None = None
        self._runner: SubprocessRunner | InProcessRunner | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgeclip-model")
        self._active = 0  # calls submitted and not finished
        self._last_used = time.monotonic()
        self._last_image_used = self._last_used
        self._watcher: asyncio.Task | None = None

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    @property
    def towers(self) -> tuple[str, ...]:
        """The towers open now (``()`` when unloaded)."""
        return self._runner.towers if self._runner is not None else ()

    @property
    def worker_pid(self) -> int | None:
        return self._runner.pid if self._runner is not None else None

    # -- calls -----------------------------------------------------------------------------------
    async def call(self, op: str, args: Any) -> Any:
        """Run one model operation (loading the model first if needed)."""
        self._active += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._call_sync, op, args)
        finally:
            self._active -= 1
            self._last_used = time.monotonic()
            if TOWER_OF_OP.get(op) == "image":
                self._last_image_used = self._last_used

    async def load(self) -> dict[str, Any]:
        await self.call("describe", None)
        assert self.info is not None
        return self.info

    def _call_sync(self, op: str, args: Any) -> Any:
        # Model calls are pure, so a worker found dead (killed, OOM) costs one retry on a fresh
        # one rather than the request; a second death in a row is reported.
        # A first text request opens the text tower alone; "describe" (--preload) opens both.
        towers = (TOWER_OF_OP[op],) if op in TOWER_OF_OP else BOTH_TOWERS
        for attempt in (1, 2):
            runner = self._ensure_loaded(towers)
            try:
                return runner.call(op, args)
            except WorkerFailed:
                self._runner = None  # the next attempt (or request) starts a fresh worker
                if attempt == 2:
                    raise
                log.warning("the model worker died during %r; retrying once on a new one", op)
        raise AssertionError("unreachable")

    def _ensure_loaded(
        self, towers: tuple[str, ...] = BOTH_TOWERS
    ) -> SubprocessRunner | InProcessRunner:
        if self._runner is not None and not self._runner.alive():
            log.warning("the model worker died while idle; starting a new one")
            self._runner.stop()
            self._runner = None
        if self._runner is None:
            started = time.perf_counter()
            runner = (InProcessRunner if self.in_process else SubprocessRunner)(self.spec)
            self.info = runner.start(towers)
            self._runner = runner
            self.metrics.model_loads += 1
            log.info(
                "loaded %s (%s; %s) in %.2f s%s", self.info["name"], self.info["variant"],
                " + ".join(runner.towers) or "no tower", time.perf_counter() - started,
                "" if runner.pid is None else f", worker pid {runner.pid}",
            )  # fmt: skip
        return self._runner

    # -- unloading -------------------------------------------------------------------------------
    async def unload(self, reason: str = "asked", *, only_if_idle: bool = False) -> dict | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._unload_sync, reason, only_if_idle)

    def _idle_for(self) -> float:
        return time.monotonic() - self._last_used

    def _unload_sync(self, reason: str, only_if_idle: bool) -> dict | None:
        runner = self._runner
        if runner is None:
            return None
        if only_if_idle and (self._active or self._idle_for() < (self.idle_ttl_s or 0)):
            return None  # a request came in after the watcher looked
        before, towers = {**self.memory(), "pid": runner.pid}, runner.towers
        runner.stop()
        release_memory()
        record = self._unload_record(reason, runner, before, towers, kept=())
        self._runner = None  # after the record: whoever sees "unloaded" also sees it
        self.metrics.model_unloads += 1
        return record

    async def drop_image_tower(self, reason: str) -> dict | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._drop_image_sync, reason)

    def _drop_image_sync(self, reason: str) -> dict | None:
        """Replace the runner by one holding the text tower alone, if images are still idle.

        A new worker rather than closing a session: the runtime keeps a closed session's arenas
        for the life of the process, so only a process exit gives all of it back."""
        runner = self._runner
        if runner is None or "image" not in runner.towers or self._active:
            return None
        if time.monotonic() - self._last_image_used < (self.image_idle_ttl_s or 0):
            return None  # an image request came in after the watcher looked
        before, towers = {**self.memory(), "pid": runner.pid}, runner.towers
        runner.stop()
        release_memory()
        self._runner = None
        self._ensure_loaded(("text",))
        self.metrics.image_tower_unloads += 1
        return self._unload_record(reason, runner, before, towers, kept=("text",))

    def _unload_record(
        self, reason: str, runner: Any, before: dict[str, Any], towers: tuple[str, ...],
        kept: tuple[str, ...],
    ) -> dict[str, Any]:  # fmt: skip
        after = self.memory()
        record = {
            "reason": reason,
            "at": time.time(),
            "in_process": runner.in_process,
            "towers_unloaded": [t for t in towers if t not in kept],
            "towers_kept": list(kept),
            "rss_before_bytes": before["total"],
            "rss_after_bytes": after["total"],
            "server_rss_before_bytes": before["server"],
            "worker_rss_before_bytes": before["worker"],
            "worker_rss_after_bytes": after["worker"],
            "worker_pid": before["pid"],
        }
        self.last_unload = record
        log.info(
            "unloaded %s (%s): resident memory %s -> %s MB",
            "the image tower, kept the text tower" if kept else "the model", reason,
            _mb(record["rss_before_bytes"]), _mb(record["rss_after_bytes"]),
        )  # fmt: skip
        return record

    def memory(self) -> dict[str, int | None]:
        server = rss_bytes()
        worker = rss_bytes(self.worker_pid) if self.worker_pid else None
        total = None if server is None else server + (worker or 0)
        return {"server": server, "worker": worker, "total": total}

    # -- background ------------------------------------------------------------------------------
    def start_watching(self) -> None:
        if self.idle_ttl_s or self.image_idle_ttl_s:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_idle())

    def _due(self) -> str | None:
        """What the watcher should do now: "unload", "drop_image" or nothing."""
        if self._runner is None or self._active:
            return None
        now = time.monotonic()
        if self.idle_ttl_s and now - self._last_used >= self.idle_ttl_s:
            return "unload"
        if (self.image_idle_ttl_s and "image" in self._runner.towers
                and now - self._last_image_used >= self.image_idle_ttl_s):  # fmt: skip
            return "drop_image"
        return None

    async def _watch_idle(self) -> None:
        ttls = [t for t in (self.idle_ttl_s, self.image_idle_ttl_s) if t]
        poll = max(0.05, min(1.0, min(ttls) / 4))
        while True:
            await asyncio.sleep(poll)
            due = self._due()
            try:
                if due == "unload":
                    await self.unload(f"idle for {self.idle_ttl_s:g} s", only_if_idle=True)
                elif due == "drop_image":
                    await self.drop_image_tower(f"no image for {self.image_idle_ttl_s:g} s")
            except Exception:  # an unload failure must not stop the watcher
                log.exception("unloading the idle model failed")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.unload("server stopping")
        self._thread.shutdown(wait=True)


def _mb(value: int | None) -> str:
    return "?" if value is None else f"{value / 1e6:.0f}"
