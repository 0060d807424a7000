"""Dynamic batching: concurrent requests for one model share one onnxruntime call.

Triton's rule: when the model is free, take every queued request, in arrival
order, while their rows fit in ``max_batch_size``; with a positive
``max_queue_delay_us`` wait that long after the first for more to arrive. The
batch runs in a worker thread, so the event loop keeps taking requests, and
each request gets back its own rows of every output.

A request's results do not depend on which requests shared its batch:
``OnnxModel`` runs every row through identically shaped, zero-padded chunks
(see :mod:`vaeanom.runtime`), so a row's score is the same bits at any
position in any batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

#: what a batch function takes and returns: named input arrays -> named output arrays
Tensors = dict[str, np.ndarray]


class ShuttingDown(RuntimeError):
    """A queued request's answer when the batcher stops before running it."""


@dataclass
class _Pending:
    feeds: Tensors
    rows: int
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Coalesce requests into batches of at most ``max_batch_size`` rows.

    ``run`` is called in a worker thread with the concatenated inputs;
    ``on_batch(rows, queue_seconds)`` reports each batch (for metrics).
    """

    def __init__(self, run: Callable[[Tensors], Tensors], max_batch_size: int,
                 max_queue_delay_us: int = 0,
                 on_batch: Callable[[int, list[float]], None] | None = None) -> None:
        self._run = run
        self.max_batch_size = int(max_batch_size)
        self.max_queue_delay = max_queue_delay_us / 1e6
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._carry: _Pending | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop taking batches; requests still queued get an error (the server is going)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        waiting = [self._carry] if self._carry is not None else []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown("the server is shutting down"))

    async def submit(self, feeds: Tensors) -> Tensors:
        """Queue one request's checked feeds; its own rows of every output."""
        rows = len(next(iter(feeds.values())))
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(feeds, rows, future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            try:
                outputs = await asyncio.to_thread(self._run, _concatenate(batch))
                start = 0
                for pending in batch:
                    if not pending.future.done():   # a timed-out request is cancelled
                        pending.future.set_result({name: value[start:start + pending.rows]
                                                   for name, value in outputs.items()})
                    start += pending.rows
            except Exception as err:  # the server answers each request of the batch with it
                logger.exception("a batch of %d request(s) failed", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(err)

    async def _collect(self) -> list[_Pending]:
        """The next batch: at least one request whose caller still waits, reported to
        ``on_batch`` as it will run (requests that timed out in the queue are not)."""
        while True:
            live = [p for p in await self._gather() if not p.future.cancelled()]
            if live:
                self._report(live)
                return live

    def _report(self, batch: list[_Pending]) -> None:
        if self._on_batch is None:
            return
        try:
            now = time.perf_counter()
            self._on_batch(sum(p.rows for p in batch), [now - p.queued_at for p in batch])
        except Exception:  # metrics must never stop the batcher
            logger.exception("the batch observer failed")

    async def _gather(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], first.rows
        deadline = first.queued_at + self.max_queue_delay
        while rows < self.max_batch_size:
            try:
                pending = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
                except (TimeoutError, asyncio.TimeoutError):  # distinct before Python 3.11
                    break
            if rows + pending.rows > self.max_batch_size:
                self._carry = pending        # first in the next batch: order is kept
                break
            batch.append(pending)
            rows += pending.rows
        return batch


def _concatenate(batch: list[_Pending]) -> Tensors:
    if len(batch) == 1:
        return batch[0].feeds
    return {name: np.concatenate([p.feeds[name] for p in batch])
            for name in batch[0].feeds}
