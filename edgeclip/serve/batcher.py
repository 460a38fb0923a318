"""Dynamic batching: concurrent requests' inputs become one model call.

Requests put their inputs in a bounded queue and await their own results. One loop takes the
queue's head, waits up to ``window_s`` for requests that are being parsed at that moment
(``expect``), and hands the inputs of whole requests, up to ``max_batch`` of them, to ``run``.
A request alone on an idle server does not wait: only announced arrivals are waited for.
While a batch runs, new requests queue up and form the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Callable

RunBatch = Callable[[list[Any]], Awaitable[list[Any]]]


class QueueFull(Exception):
    """The queue cannot take a request's inputs now; the client should retry later (429)."""


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Batches items for ``run(items) -> results`` (one result per item, same order)."""

    def __init__(
        self,
        name: str,
        run: RunBatch,
        *,
        max_batch: int,
        window_s: float,
        max_queue: int,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # items in _jobs
        self._arriving = 0  # requests announced with expect() that have not submitted yet
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._running = False  # a batch is in run()

    @property
    def depth(self) -> int:
        """Inputs waiting in the queue (not counting the batch being run)."""
        return self._queued

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"batcher-{self.name}"
        )

    async def stop(self, timeout_s: float = 60.0) -> None:
        """Finish the queued and running batches (for at most ``timeout_s``), then stop."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._jobs or self._running) and not self._task.done() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        for job in self._jobs:  # only left after the timeout
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    @contextlib.asynccontextmanager
    async def expect(self) -> AsyncIterator[Callable[[list[Any]], Awaitable[list[Any]]]]:
        """Announce a request that is being prepared; yields its ``submit``.

        A batch being formed waits (up to the window) while announced requests are pending.
        """
        self._arriving += 1
        announced = True

        def withdraw() -> None:
            nonlocal announced
            if announced:
                announced = False
                self._arriving -= 1
                self._poke()

        async def submit(items: list[Any]) -> list[Any]:
            withdraw()
            return await self.submit(items)

        try:
            yield submit
        finally:
            withdraw()

    async def submit(self, items: list[Any]) -> list[Any]:
        """Queue ``items`` (one request) and return their results; ``QueueFull`` if no room."""
        if not items:
            return []
        if self._task is None or self._task.done():
            raise RuntimeError(f"the {self.name} batcher is not running")
        if self._queued and self._queued + len(items) > self.max_queue:
            raise QueueFull(
                f"the {self.name} queue holds {self._queued} inputs (limit {self.max_queue}, "
                "--max-queue); retry shortly."
            )
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._queued += len(job.items)
        self._poke()
        return await job.future

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _wait_wake(self, timeout: float | None) -> bool:
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _collect(self) -> list[_Job]:
        while not self._jobs:
            await self._wait_wake(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while self._arriving > 0 and self._queued < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait_wake(remaining):
                break
        taken = [self._jobs.popleft()]
        size = len(taken[0].items)
        while self._jobs and size + len(self._jobs[0].items) <= self.max_batch:
            job = self._jobs.popleft()
            taken.append(job)
            size += len(job.items)
        self._queued -= size
        return taken

    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            jobs = [j for j in jobs if not j.future.cancelled()]  # clients that went away
            if not jobs:
                continue
            items = [item for job in jobs for item in job.items]
            if self._on_batch is not None:
                self._on_batch(self.name, len(items))
            self._running = True
            try:
                results = await self._run(items)
            except Exception as exc:  # the model's failure is every waiting request's
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._running = False
            start = 0
            for job in jobs:
                end = start + len(job.items)
                if not job.future.done():
                    job.future.set_result(results[start:end])
                start = end
