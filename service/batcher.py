"""The dynamic batcher: plain asyncio, no HTTP.

Semantics follow Triton's dynamic batcher. Requests submit N items (one per image) and get N
results back in order. When the runtime is free, the batcher takes queued items in arrival order
up to ``max_batch_size``; if fewer are queued it waits until the batch fills or the oldest item
has waited ``max_queue_delay_ms``. With ``preferred_batch_sizes`` it sends a batch as soon as the
largest preferred size that the queue can fill is reached. With ``wait_only_for_incoming`` the wait
is taken only while more items are known to be on their way (callers announce them with
:meth:`DynamicBatcher.incoming` while they decode): under load batches fill, and a lone request
never waits for company that is not coming. A request may be split across
batches. Items whose caller was cancelled (client gone, deadline passed) are never computed.

How many images a model holds and how long a request may wait are decided before and around
:meth:`DynamicBatcher.submit`, over the whole wait, decoding included (``service.admission``, and
the deadline in ``service.worker``): the batcher only batches.

A runner returns the batch's outputs, fails the whole batch by raising, or fails single items by
returning an exception in their place. A pipelined runner (device preprocessing, then inference)
returns an awaitable of the outputs once its first stage is done: the batcher then counts the
runtime as free and forms the next batch while the rest of this one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import QueueFullError

__all__ = ["BatchRunner", "BatchStats", "DynamicBatcher", "doubling_batch_sizes"]

log = logging.getLogger("imgcls.batcher")

In = TypeVar("In")
Out = TypeVar("Out")

# Outputs, or (pipelined) an awaitable of them once the runner's first stage is done.
BatchRunner = Callable[[list[Any]], Awaitable[Sequence[Any] | Awaitable[Sequence[Any]]]]


def doubling_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... and ``max_batch_size`` itself: the sizes warmed up, and the batch-size histogram buckets."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if max_batch_size > 1:
        sizes.append(max_batch_size)
    return sizes


@dataclass
class BatchStats:
    """What a batch observer receives (for metrics): its size, queue waits, and run time."""

    size: int
    queue_seconds: list[float]
    run_seconds: float  # from handing the batch to the runner to delivering its results


@dataclass(eq=False)
class _Item:
    payload: Any
    future: asyncio.Future
    enqueued_at: float
    in_queue: bool = field(default=True)
    batched_at: float | None = None


class DynamicBatcher(Generic[In, Out]):
    """Collects items from concurrent callers into batches for one runner (one model version)."""

    def __init__(
        self,
        runner: BatchRunner,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        preferred_batch_sizes: Sequence[int] = (),
        on_batch: Callable[[BatchStats], None] | None = None,
        wait_only_for_incoming: bool = False,
    ) -> None:
        if max_batch_size < 1 or max_queue_delay_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue_delay_ms >= 0")
        self._runner = runner
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.preferred_batch_sizes = sorted({s for s in preferred_batch_sizes if 1 <= s <= max_batch_size})
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._queued = 0  # items still wanted: excludes cancelled ones left in the deque
        self.wait_only_for_incoming = wait_only_for_incoming
        self._incoming = 0  # items announced by callers that are still preparing them
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def queue_depth(self) -> int:
        """Items submitted and not yet taken into a batch."""
        return self._queued

    @property
    def incoming_count(self) -> int:
        """Items announced with :meth:`incoming` and not yet submitted (being decoded, or waiting to be)."""
        return self._incoming

    @contextlib.contextmanager
    def incoming(self, count: int) -> Iterator[None]:
        """Announce ``count`` items being prepared (decoded) for a :meth:`submit` right after this block.

        Leave the block and call ``submit`` with no ``await`` in between, so the batcher never sees
        the items as neither incoming nor queued.
        """
        self._incoming += count
        try:
            yield
        finally:
            self._incoming -= count
            self._wakeup.set()  # a batch waiting for these need not wait any longer if they failed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="dynamic-batcher")
            self._task.add_done_callback(self._on_loop_exit)

    def _on_loop_exit(self, task: asyncio.Task) -> None:
        """If the loop ever dies, fail what is queued and refuse new work instead of hanging callers."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("dynamic batcher stopped unexpectedly", exc_info=task.exception())
        self._closing = True
        for item in self._take(self._queued):
            item.future.set_exception(RuntimeError("the model's batcher stopped; see the server log"))

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting work; with ``drain``, finish what is queued first, else cancel it."""
        self._closing = True
        if not drain:
            for item in self._take(self._queued):
                item.future.set_exception(
                    QueueFullError("the model was unloaded before these images were processed")
                )
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, payloads: Sequence[In], timings: dict[str, float] | None = None) -> list[Out]:
        """Queue ``payloads`` and wait for their results, in order.

        Raises :class:`QueueFullError` once :meth:`stop` has been called. Cancelling the
        caller (client gone, deadline passed) removes its queued items: they are never computed.
        With ``timings``, ``queue_seconds`` is set to the longest wait of any of its items.
        """
        if not payloads:
            return []
        if self._closing:
            raise QueueFullError("the model is shutting down; retry against another replica")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(payload, loop.create_future(), now) for payload in payloads]
        for item in items:
            item.future.add_done_callback(lambda _f, item=item: self._forget_if_cancelled(item))
        self._queue.extend(items)
        self._queued += len(items)
        self._wakeup.set()
        try:
            results = list(await asyncio.gather(*(item.future for item in items)))
            if timings is not None:  # the longest any of this request's images waited (for the request log)
                timings["queue_seconds"] = max((item.batched_at or now) - now for item in items)
            return results
        finally:
            self._cancel(items)  # on any early exit (error, deadline, caller cancelled) drop what is left

    def _cancel(self, items: list[_Item]) -> None:
        for item in items:
            if not item.future.done():
                item.future.cancel()
            elif not item.future.cancelled():
                item.future.exception()  # mark retrieved: a sibling's failure is reported once

    def _forget_if_cancelled(self, item: _Item) -> None:
        if item.future.cancelled() and item.in_queue:
            item.in_queue = False
            self._queued -= 1

    def _take(self, count: int) -> list[_Item]:
        batch: list[_Item] = []
        while self._queue and len(batch) < count:
            item = self._queue.popleft()
            if not item.in_queue:  # cancelled while queued, already uncounted
                continue
            item.in_queue = False
            self._queued -= 1
            if item.future.done():  # cancelled, its callback not run yet: never computed
                continue
            batch.append(item)
        return batch

    def _drop_cancelled_head(self) -> None:
        while self._queue and not self._queue[0].in_queue:
            self._queue.popleft()

    def _target_size(self) -> int | None:
        """The batch size to send now without waiting, or None to keep waiting for more items."""
        if self._queued >= self.max_batch_size:
            return self.max_batch_size
        reachable = [s for s in self.preferred_batch_sizes if s <= self._queued]
        return reachable[-1] if reachable else None  # Triton: the largest preferred size the queue can fill

    async def _next_batch(self) -> list[_Item]:
        while True:
            self._drop_cancelled_head()
            if not self._queue:
                if self._closing:
                    return []
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            size = self._target_size()
            waited = time.monotonic() - self._queue[0].enqueued_at
            remaining = self.max_queue_delay_s - waited
            nothing_coming = self.wait_only_for_incoming and self._incoming == 0
            if size is None and (remaining <= 0 or self._closing or nothing_coming):
                size = self.max_batch_size
            if size is not None:
                batch = self._take(size)
                if batch:  # empty only if every taken item was cancelled a moment ago
                    return batch
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _notify(self, stats: BatchStats) -> None:
        try:
            self._on_batch(stats)
        except Exception:  # an observer (metrics) must never stop batching
            log.exception("batch observer failed")

    async def _loop(self) -> None:
        finishing: set[asyncio.Task] = set()  # pipelined batches past their runner's first stage
        try:
            while True:
                batch = await self._next_batch()
                if not batch:
                    return
                started = time.monotonic()
                for item in batch:
                    item.batched_at = started
                try:
                    outputs = await self._runner([item.payload for item in batch])
                except Exception as exc:  # delivered to exactly the callers in this batch
                    self._fail(batch, exc)
                    continue
                if inspect.isawaitable(outputs):
                    task = asyncio.get_running_loop().create_task(self._finish(batch, outputs, started))
                    finishing.add(task)
                    task.add_done_callback(finishing.discard)
                else:
                    self._deliver(batch, outputs, started)
        finally:
            if finishing:  # stop(drain) returns only once every batch has its results
                await asyncio.gather(*finishing, return_exceptions=True)

    async def _finish(self, batch: list[_Item], pending: Awaitable[Sequence[Any]], started: float) -> None:
        try:
            outputs = await pending
        except Exception as exc:
            self._fail(batch, exc)
            return
        except BaseException:  # cancelled while shutting down: no caller is left waiting forever
            for item in batch:
                if not item.future.done():
                    item.future.cancel()
            raise
        self._deliver(batch, outputs, started)

    def _fail(self, batch: list[_Item], exc: Exception) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    def _deliver(self, batch: list[_Item], outputs: Sequence[Any], started: float) -> None:
        if len(outputs) != len(batch):
            self._fail(
                batch, RuntimeError(f"runner returned {len(outputs)} results for a batch of {len(batch)}")
            )
            return
        finished = time.monotonic()
        for item, output in zip(batch, outputs, strict=True):
            if item.future.done():
                continue
            if isinstance(output, BaseException):  # this item alone failed (e.g. a corrupt image)
                item.future.set_exception(output)
            else:
                item.future.set_result(output)
        if self._on_batch is not None:
            self._notify(
                BatchStats(len(batch), [started - item.enqueued_at for item in batch], finished - started)
            )
