"""The model's life in the server: loaded on first use (or at start), unloaded when idle.

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
from .worker import InProcessRunner, ModelSpec, SubprocessRunner, WorkerFailed, release_memory

log = logging.getLogger("edgeclip.serve")


class ModelHost:
    """Owns the runner of one model and the thread that talks to it."""

    def __init__(
        self, spec: ModelSpec, *, idle_ttl_s: float | None, in_process: bool, metrics: Metrics
    ) -> None:
        self.spec = spec
        self.idle_ttl_s = idle_ttl_s
        self.in_process = in_process
        self.metrics = metrics
        self.info: dict[str, Any] | None = None  # kept across unloads: the same model reloads
        self.last_unload: dict[str, Any] | None = None
        self._runner: SubprocessRunner | InProcessRunner | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgeclip-model")
        self._active = 0  # calls submitted and not finished
        self._last_used = time.monotonic()
        self._watcher: asyncio.Task | None = None

    @property
    def loaded(self) -> bool:
        return self._runner is not None

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

    async def load(self) -> dict[str, Any]:
        await self.call("describe", None)
        assert self.info is not None
        return self.info

    def _call_sync(self, op: str, args: Any) -> Any:
        # Model calls are pure, so a worker found dead (killed, OOM) costs one retry on a fresh
        # one rather than the request; a second death in a row is reported.
        for attempt in (1, 2):
            runner = self._ensure_loaded()
            try:
                return runner.call(op, args)
            except WorkerFailed:
                self._runner = None  # the next attempt (or request) starts a fresh worker
                if attempt == 2:
                    raise
                log.warning("the model worker died during %r; retrying once on a new one", op)
        raise AssertionError("unreachable")

    def _ensure_loaded(self) -> SubprocessRunner | InProcessRunner:
        if self._runner is not None and not self._runner.alive():
            log.warning("the model worker died while idle; starting a new one")
            self._runner.stop()
            self._runner = None
        if self._runner is None:
            started = time.perf_counter()
            runner = (InProcessRunner if self.in_process else SubprocessRunner)(self.spec)
            self.info = runner.start()
            self._runner = runner
            self.metrics.model_loads += 1
            log.info(
                "loaded %s (%s) in %.2f s%s", self.info["name"], self.info["variant"],
                time.perf_counter() - started,
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
        worker_pid = runner.pid
        before = self.memory()
        runner.stop()
        release_memory()
        after = self.memory()
        record = {
            "reason": reason,
            "at": time.time(),
            "in_process": runner.in_process,
            "rss_before_bytes": before["total"],
            "rss_after_bytes": after["total"],
            "server_rss_before_bytes": before["server"],
            "worker_rss_before_bytes": before["worker"],
            "worker_pid": worker_pid,
        }
        self.last_unload = record
        self._runner = None  # after the record: whoever sees "unloaded" also sees it
        self.metrics.model_unloads += 1
        log.info(
            "unloaded the model (%s): resident memory %s -> %s MB", reason,
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
        if self.idle_ttl_s:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_idle())

    async def _watch_idle(self) -> None:
        assert self.idle_ttl_s
        poll = max(0.05, min(1.0, self.idle_ttl_s / 4))
        while True:
            await asyncio.sleep(poll)
            if (
                self._runner is not None
                and not self._active
                and self._idle_for() >= self.idle_ttl_s
            ):
                try:
                    await self.unload(f"idle for {self.idle_ttl_s:g} s", only_if_idle=True)
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
