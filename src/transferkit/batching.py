"""Dynamic batching: concurrent requests' inputs are gathered into one model call.

The first waiting input opens a batch; more are added until ``max_batch_size`` inputs are in it or ``max_wait_ms``
has passed, then the batch runs in a single worker thread (so the event loop keeps accepting requests) while the next
one fills. The queue is bounded: :meth:`DynamicBatcher.submit` raises :class:`QueueFull` instead of letting it grow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import bad_value

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue has no room for the request's inputs."""


class DynamicBatcher:
    """Gathers inputs from concurrent callers into batches for ``process``.

    Args:
        process: a list of inputs -> a sequence of as many results (runs in one worker thread).
        max_batch_size: most inputs per call of ``process`` (1: no batching).
        max_wait_ms: how long the first input of a batch waits for more.
        max_queue: most inputs waiting; beyond it :meth:`submit` raises :class:`QueueFull`.
    """

    def __init__(self, process: Callable[[list[Any]], Sequence[Any]], *, max_batch_size: int = 16,
                 max_wait_ms: float = 5.0, max_queue: int = 256) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise bad_value("max_batch_size", max_batch_size, "a positive integer", "Pass e.g. --max-batch-size 16.")
        if not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise bad_value("max_wait_ms", max_wait_ms, "a number of milliseconds >= 0", "Pass e.g. --max-wait-ms 5.")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise bad_value("max_queue", max_queue, "a positive integer", "Pass e.g. --max-queue 256.")
        self.process = process
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._items: deque[tuple[Any, asyncio.Future]] = deque()
        self._added: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._sizes: Counter[int] = Counter()
        self._rejected = 0
        self._busy_s = 0.0

    async def start(self) -> None:
        """Start the batching loop (and its worker thread) on the running event loop; again after :meth:`stop`."""
        self._added = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-batch")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="transferkit-batcher")

    async def stop(self) -> None:
        """Stop the loop; waiting callers get ``CancelledError``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, future in self._items:
            future.cancel()
        self._items.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._added = self._executor = None

    async def submit(self, inputs: Sequence[Any]) -> list[Any]:
        """Queue all of ``inputs`` (or none of them: :class:`QueueFull`) and wait for their results."""
        if self._added is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        if len(self._items) + len(inputs) > self.max_queue:
            self._rejected += 1
            raise QueueFull(f"{len(self._items)} inputs are waiting (at most {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in inputs]
        self._items.extend(zip(inputs, futures, strict=True))
        self._added.set()
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:  # a timed-out or disconnected caller: its inputs are skipped, not computed
                future.cancel()

    def stats(self) -> dict[str, Any]:
        """Batches run, inputs processed, the batch-size histogram, queue depth and rejected requests."""
        batches = sum(self._sizes.values())
        inputs = sum(size * count for size, count in self._sizes.items())
        return {"batches": batches, "inputs": inputs,
                "batch_sizes": {str(k): v for k, v in sorted(self._sizes.items())},
                "max_batch_size_seen": max(self._sizes, default=0),
                "mean_batch_size": round(inputs / batches, 3) if batches else 0.0, "queued": len(self._items),
                "rejected_queue_full": self._rejected, "busy_seconds": round(self._busy_s, 3),
                "max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait * 1000.0,
                "max_queue": self.max_queue}

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.process, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"process returned {len(results)} results for {len(batch)} inputs")
            except Exception as exc:  # the model failed: every caller of this batch gets the error
                logger.exception("Batch of %d failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
            self._busy_s += time.perf_counter() - started
            self._sizes[len(batch)] += 1

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        """Wait for a first live input, then for more until the batch is full or ``max_wait`` has passed."""
        added = self._added
        batch: list[tuple[Any, asyncio.Future]] = []
        deadline = None
        while len(batch) < self.max_batch_size:
            while self._items and len(batch) < self.max_batch_size:
                item, future = self._items.popleft()
                if not future.done():
                    batch.append((item, future))
            if len(batch) >= self.max_batch_size:
                break
            if batch and deadline is None:
                deadline = time.monotonic() + self.max_wait
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            added.clear()
            if self._items:
                continue
            try:
                await asyncio.wait_for(added.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch
