"""The dynamic batcher: plain asyncio, no HTTP.

Semantics follow Triton's dynamic batcher. Requests submit N items (one per image) and get N
results back in order. When the runner is free, the batcher takes queued items in arrival order
up to ``max_batch_size``; if fewer are queued it waits until the batch fills or the oldest item
has waited ``max_queue_delay_ms``. With ``preferred_batch_sizes`` it sends a batch as soon as the
largest preferred size that the queue can fill is reached. With ``wait_only_for_incoming`` the wait
is taken only while more items are known to be on their way (callers announce them with
:meth:`DynamicBatcher.incoming` while they decode): under load batches fill, and a lone request
never waits for company that is not coming. A request may be split across batches.

How many images a model holds and how long a request may wait are decided before and around
:meth:`DynamicBatcher.submit`, over the whole wait, decoding included (``service.admission``, and
the deadline in ``service.worker``): the batcher only batches.

The runner (:class:`BatchRunner`) runs a batch in two stages:

- ``await runner.start_batch(payloads) -> handle``: the batcher awaits it before taking the next
  batch, so the runner counts as busy until it returns, and items queue up for a fuller next batch.
- ``await runner.finish_batch(handle) -> outputs``: awaited in a task of its own, so the next batch
  is taken and started meanwhile. It returns one output per payload, in order; an exception in an
  item's place fails that item alone. Raising from either stage fails every item of the batch.

A runner that computes in one step does all of it in ``start_batch`` and returns the outputs from
``finish_batch``. The worker's device path decodes the batch on the GPU in ``start_batch`` and waits
for its inference in ``finish_batch``: the next batch is decoded while this one computes, which is
the overlap device preprocessing exists for (a single ``run(batch)`` would lose it, or leave the
batcher no way to know when the runner can take more).

Cancellation has one mechanism, the caller's asyncio cancellation. A deadline (``asyncio.timeout``
in ``service.worker``) or a client gone (``service.routes_common``) cancels the task awaiting
:meth:`DynamicBatcher.submit`, which cancels its items' futures. An item whose future is done is out
of the queue and never reaches the runner; an item already in a batch is computed and its result
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from service.errors import QueueFullError

__all__ = ["BatchRunner", "BatchStats", "DynamicBatcher", "doubling_batch_sizes"]

log = logging.getLogger("imgcls.batcher")

In = TypeVar("In")
Out = TypeVar("Out")
Handle = TypeVar("Handle")
In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)


class BatchRunner(Protocol[In_contra, Out_co, Handle]):
    """Runs the batches of one model version in two stages (the module docstring has the contract)."""

    async def start_batch(self, payloads: Sequence[In_contra]) -> Handle:
        """Take the batch; return once the runner can take the next one."""
        ...

    async def finish_batch(self, handle: Handle) -> Sequence[Out_co | BaseException]:
        """The batch's outputs, one per payload in order (an exception fails that item alone)."""
        ...


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


@dataclass(eq=False)  # hashed by identity: the queue is keyed by item
class _Item:
    payload: Any
    future: asyncio.Future
    enqueued_at: float
    batched_at: float | None = None


class DynamicBatcher(Generic[In, Out]):
    """Collects items from concurrent callers into batches for one runner (one model version)."""

    def __init__(
        self,
        runner: BatchRunner[In, Out, Any],
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
        # Items still wanted, oldest first. Ordered and keyed by item, so a cancelled item leaves it
        # at once from anywhere (O(1)), and what is left is what the next batches take.
        self._queue: OrderedDict[_Item, None] = OrderedDict()
        self.wait_only_for_incoming = wait_only_for_incoming
        self._incoming = 0  # items announced by callers that are still preparing them
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def queue_depth(self) -> int:
        """Items submitted and not yet taken into a batch."""
        return len(self._queue)

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
        for item in self._take(len(self._queue)):
            item.future.set_exception(RuntimeError("the model's batcher stopped; see the server log"))

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting work; with ``drain``, finish what is queued first, else cancel it."""
        self._closing = True
        if not drain:
            for item in self._take(len(self._queue)):
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
            self._queue[item] = None
            item.future.add_done_callback(lambda _f, item=item: self._queue.pop(item, None))
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

    def _take(self, count: int) -> list[_Item]:
        batch: list[_Item] = []
        while self._queue and len(batch) < count:
            item, _ = self._queue.popitem(last=False)
            if not item.future.done():  # done: cancelled a moment ago, its done callback not run yet
                batch.append(item)
        return batch

    def _target_size(self) -> int | None:
        """The batch size to send now without waiting, or None to keep waiting for more items."""
        queued = len(self._queue)
        if queued >= self.max_batch_size:
            return self.max_batch_size
        reachable = [s for s in self.preferred_batch_sizes if s <= queued]
        return reachable[-1] if reachable else None  # Triton: the largest preferred size the queue can fill

    async def _next_batch(self) -> list[_Item]:
        while True:
            if not self._queue:
                if self._closing:
                    return []
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            size = self._target_size()
            oldest = next(iter(self._queue))
            remaining = self.max_queue_delay_s - (time.monotonic() - oldest.enqueued_at)
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
        finishing: set[asyncio.Task] = set()  # batches past start_batch, waiting for finish_batch
        loop = asyncio.get_running_loop()
        try:
            while batch := await self._next_batch():
                started = time.monotonic()
                for item in batch:
                    item.batched_at = started
                try:
                    handle = await self._runner.start_batch([item.payload for item in batch])
                except Exception as exc:  # delivered to exactly the callers in this batch
                    self._fail(batch, exc)
                    continue
                task = loop.create_task(self._finish(batch, handle, started))
                finishing.add(task)
                task.add_done_callback(finishing.discard)
        finally:
            if finishing:  # stop(drain) returns only once every batch has its results
                await asyncio.gather(*finishing, return_exceptions=True)

    async def _finish(self, batch: list[_Item], handle: Any, started: float) -> None:
        try:
            outputs = await self._runner.finish_batch(handle)
        except Exception as exc:
            self._fail(batch, exc)
            return
        except BaseException:  # cancelled while shutting down: no caller is left waiting forever
            for item in batch:
                if not item.future.done():
                    item.future.cancel()
            raise
        try:
            self._deliver(batch, outputs, started)
        except Exception as exc:  # outputs that do not fit the batch: a runner bug, answered, not hung
            log.exception("delivering a batch of %d failed", len(batch))
            self._fail(batch, exc)

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
            if item.future.done():  # its caller left after the batch was taken: the result is dropped
                continue
            if isinstance(output, BaseException):  # this item alone failed (e.g. a corrupt image)
                item.future.set_exception(output)
            else:
                item.future.set_result(output)
        if self._on_batch is not None:
            self._notify(
                BatchStats(len(batch), [started - item.enqueued_at for item in batch], finished - started)
            )
