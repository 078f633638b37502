"""The dynamic batcher on its own, with fake runners (service.batcher.BatchRunner) whose progress the
tests control: pure asyncio, no HTTP, no model."""

from __future__ import annotations

import asyncio

import pytest

from service.batcher import BatchRunner, BatchStats, DynamicBatcher
from service.errors import QueueFullError


class FakeRunner:
    """Doubles every payload, all in its first stage; records each batch; can be held at a gate or
    made to fail."""

    def __init__(self, gated: bool = False) -> None:
        self.batches: list[list] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.started = asyncio.Event()
        self.fail_on: object | None = None
        self.wrong_count = False

    async def start_batch(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        self.started.set()
        await self.gate.wait()
        if self.fail_on is not None and self.fail_on in payloads:
            raise RuntimeError(f"cannot process {self.fail_on}")
        if self.wrong_count:
            return payloads[:-1]
        return [p * 2 for p in payloads]

    async def finish_batch(self, outputs: list) -> list:
        return outputs


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def batcher(runner: BatchRunner, **settings) -> DynamicBatcher:
    defaults = {"max_batch_size": 4, "max_queue_delay_ms": 10_000}
    b = DynamicBatcher(runner, **{**defaults, **settings})
    b.start()
    return b


def test_a_full_batch_is_sent_without_waiting_for_the_delay():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=4, max_queue_delay_ms=60_000)
        results = await asyncio.gather(*(b.submit([i]) for i in range(4)))
        assert results == [[0], [2], [4], [6]]
        assert runner.batches == [[0, 1, 2, 3]]
        await b.stop()

    run(scenario)


def test_a_partial_batch_waits_for_the_oldest_items_delay_then_goes():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=8, max_queue_delay_ms=300)
        pending = [asyncio.create_task(b.submit([i])) for i in range(3)]
        await asyncio.sleep(0.05)
        assert runner.batches == []  # still inside the delay, batch not full
        assert await asyncio.gather(*pending) == [[0], [2], [4]]
        assert runner.batches == [[0, 1, 2]]
        await b.stop()

    run(scenario)


def test_zero_delay_sends_whatever_is_queued():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=8, max_queue_delay_ms=0)
        assert await b.submit([5]) == [10]
        await b.stop()

    run(scenario)


def test_multi_image_requests_are_split_across_batches_and_reassembled_in_order():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=3, max_queue_delay_ms=0)
        first, second = await asyncio.gather(b.submit([1, 2, 3, 4, 5]), b.submit([6, 7]))
        assert first == [2, 4, 6, 8, 10]
        assert second == [12, 14]
        assert [len(batch) for batch in runner.batches] == [3, 3, 1]
        assert [p for batch in runner.batches for p in batch] == [1, 2, 3, 4, 5, 6, 7]  # arrival order
        await b.stop()

    run(scenario)


def test_items_queued_while_the_runner_is_busy_form_the_next_batch():
    async def scenario():
        runner = FakeRunner(gated=True)
        b = batcher(runner, max_batch_size=4, max_queue_delay_ms=0)
        first = asyncio.create_task(b.submit([0]))
        await runner.started.wait()
        later = [asyncio.create_task(b.submit([i])) for i in range(1, 7)]
        await asyncio.sleep(0.01)
        runner.gate.set()
        await asyncio.gather(first, *later)
        assert [len(batch) for batch in runner.batches] == [1, 4, 2]
        await b.stop()

    run(scenario)


def test_preferred_batch_size_is_sent_as_soon_as_it_is_reached():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=8, max_queue_delay_ms=60_000, preferred_batch_sizes=[2, 4])
        assert await b.submit([1, 2]) == [2, 4]
        assert runner.batches == [[1, 2]]
        await b.stop()

    run(scenario)


def test_queue_depth_counts_every_queued_image_and_none_in_a_batch():
    async def scenario():
        runner = FakeRunner(gated=True)
        b = batcher(runner, max_batch_size=1, max_queue_delay_ms=0)
        running = asyncio.create_task(b.submit([0]))
        await runner.started.wait()
        queued = asyncio.create_task(b.submit([1, 2]))
        await asyncio.sleep(0)
        assert b.queue_depth == 2  # the image in the runner is no longer queued
        runner.gate.set()
        assert await running == [0]
        assert await queued == [2, 4]
        assert b.queue_depth == 0
        await b.stop()

    run(scenario)


def test_a_deadline_passing_in_the_queue_drops_the_items_uncomputed():
    async def scenario():
        runner = FakeRunner(gated=True)
        b = batcher(runner, max_batch_size=1, max_queue_delay_ms=0)
        running = asyncio.create_task(b.submit([0]))
        await runner.started.wait()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # the caller's deadline (the worker's, in the service)
                await b.submit([7, 8])
        assert b.queue_depth == 0
        runner.gate.set()
        await running
        assert await b.submit([9]) == [18]
        assert 7 not in [p for batch in runner.batches for p in batch]
        await b.stop()

    run(scenario)


def test_a_cancelled_caller_s_items_are_never_computed():
    async def scenario():
        runner = FakeRunner(gated=True)
        b = batcher(runner, max_batch_size=2, max_queue_delay_ms=0)
        running = asyncio.create_task(b.submit([0]))
        await runner.started.wait()
        gone = asyncio.create_task(b.submit([100, 101, 102]))
        stays = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert b.queue_depth == 1
        runner.gate.set()
        assert await stays == [2]
        await running
        computed = [p for batch in runner.batches for p in batch]
        assert computed == [0, 1]
        await b.stop()

    run(scenario)


def test_a_runner_error_reaches_exactly_the_requests_in_that_batch():
    async def scenario():
        runner = FakeRunner(gated=True)
        runner.fail_on = 13
        b = batcher(runner, max_batch_size=2, max_queue_delay_ms=0)
        first = asyncio.create_task(b.submit([0]))
        await runner.started.wait()
        a = asyncio.create_task(b.submit([1]))
        bad = asyncio.create_task(b.submit([13]))
        c = asyncio.create_task(b.submit([3]))
        await asyncio.sleep(0)
        runner.gate.set()
        results = await asyncio.gather(first, a, bad, c, return_exceptions=True)
        assert results[0] == [0]
        assert isinstance(results[1], RuntimeError) and isinstance(results[2], RuntimeError)
        assert "cannot process 13" in str(results[2])
        assert results[3] == [6]
        await b.stop()

    run(scenario)


def test_a_runner_returning_the_wrong_count_fails_the_batch():
    async def scenario():
        runner = FakeRunner()
        runner.wrong_count = True
        b = batcher(runner, max_batch_size=2, max_queue_delay_ms=0)
        with pytest.raises(RuntimeError, match="returned 1 results for a batch of 2"):
            await b.submit([1, 2])
        await b.stop()

    run(scenario)


def test_batch_observer_sees_sizes_and_queue_waits():
    async def scenario():
        seen: list[BatchStats] = []
        runner = FakeRunner()
        b = DynamicBatcher(runner, max_batch_size=3, max_queue_delay_ms=0, on_batch=seen.append)
        b.start()
        await b.submit([1, 2, 3])
        assert [s.size for s in seen] == [3]
        assert len(seen[0].queue_seconds) == 3 and all(q >= 0 for q in seen[0].queue_seconds)
        await b.stop()

    run(scenario)


def test_stop_drains_queued_work_and_then_refuses_new_work():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=2, max_queue_delay_ms=60_000)
        pending = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0)
        await b.stop(drain=True)
        assert await pending == [2]
        with pytest.raises(QueueFullError, match="shutting down"):
            await b.submit([1])

    run(scenario)


def test_stop_without_drain_fails_queued_work_fast():
    async def scenario():
        runner = FakeRunner(gated=True)
        b = batcher(runner, max_batch_size=1, max_queue_delay_ms=0)
        running = asyncio.create_task(b.submit([0]))
        await runner.started.wait()
        queued = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0)
        stopping = asyncio.create_task(b.stop(drain=False))
        with pytest.raises(QueueFullError, match="unloaded"):
            await queued
        runner.gate.set()
        await running
        await stopping

    run(scenario)


def test_a_preferred_size_is_sent_at_once_even_when_a_request_overshoots_it():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=8, max_queue_delay_ms=200, preferred_batch_sizes=[2])
        pending = asyncio.create_task(b.submit([1, 2, 3]))
        await asyncio.sleep(0.05)
        assert runner.batches == [[1, 2]]  # sent at once; the leftover image waits for the delay
        assert await pending == [2, 4, 6]
        assert runner.batches == [[1, 2], [3]]
        await b.stop()

    run(scenario)


def test_a_failing_observer_does_not_stop_batching():
    async def scenario():
        def broken(stats):
            raise ValueError("metrics bug")

        runner = FakeRunner()
        b = DynamicBatcher(runner, max_batch_size=2, max_queue_delay_ms=0, on_batch=broken)
        b.start()
        assert await b.submit([1]) == [2]
        assert await b.submit([2]) == [4]
        await b.stop()

    run(scenario)


def test_waiting_only_for_incoming_sends_a_lone_request_at_once():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=8, max_queue_delay_ms=60_000, wait_only_for_incoming=True)
        assert await b.submit([1]) == [2]  # nothing else announced: no minute-long wait
        assert runner.batches == [[1]]
        await b.stop()

    run(scenario)


def test_waiting_only_for_incoming_waits_for_announced_items_and_batches_them():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=8, max_queue_delay_ms=60_000, wait_only_for_incoming=True)
        decoded = asyncio.Event()

        async def slow_request() -> list:
            with b.incoming(2):
                await decoded.wait()  # "decoding"
            return await b.submit([10, 11])

        slow = asyncio.create_task(slow_request())
        await asyncio.sleep(0)
        assert b.incoming_count == 2
        fast = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0.05)
        assert runner.batches == []  # two images are on their way: worth waiting for
        decoded.set()
        assert await asyncio.gather(fast, slow) == [[2], [20, 22]]
        assert b.incoming_count == 0
        assert runner.batches == [[1, 10, 11]]
        await b.stop()

    run(scenario)


def test_waiting_stops_when_announced_items_fail_before_arriving():
    async def scenario():
        runner = FakeRunner()
        b = batcher(runner, max_batch_size=8, max_queue_delay_ms=60_000, wait_only_for_incoming=True)
        failed = asyncio.Event()

        async def failing_request() -> None:
            with b.incoming(1):
                await failed.wait()
                raise ValueError("corrupt image")

        doomed = asyncio.create_task(failing_request())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(b.submit([3]))
        await asyncio.sleep(0.05)
        assert runner.batches == []
        failed.set()
        with pytest.raises(ValueError, match="corrupt"):
            await doomed
        assert await waiting == [6]  # sent as soon as the announced image stopped coming
        await b.stop()

    run(scenario)


class PipelinedRunner:
    """Stage one (preprocessing) and stage two (inference), each held at its own gate, as the worker's
    device path runs them."""

    def __init__(self) -> None:
        self.first_gate, self.second_gate = asyncio.Event(), asyncio.Event()
        self.first: list[list] = []
        self.second: list[list] = []
        self.fail_second_on: object | None = None

    async def start_batch(self, payloads: list) -> list:
        self.first.append(list(payloads))
        await self.first_gate.wait()
        return list(payloads)

    async def finish_batch(self, payloads: list) -> list:
        self.second.append(payloads)
        await self.second_gate.wait()
        if self.fail_second_on in payloads:
            raise RuntimeError(f"inference failed on {self.fail_second_on}")
        return [p * 2 for p in payloads]


def test_a_pipelined_runner_gets_the_next_batch_once_its_first_stage_is_done_not_before():
    async def scenario():
        runner = PipelinedRunner()
        b = batcher(runner, max_batch_size=2, max_queue_delay_ms=0)
        pending = [asyncio.create_task(b.submit([i])) for i in range(6)]
        await asyncio.sleep(0.05)
        assert runner.first == [[0, 1]]  # batch one is in its first stage: nothing else is taken
        runner.first_gate.set()
        await asyncio.sleep(0.05)
        # batch one waits in stage two while later batches go through stage one
        assert runner.first == [[0, 1], [2, 3], [4, 5]] and runner.second[0] == [0, 1]
        assert not any(task.done() for task in pending)
        runner.second_gate.set()
        assert await asyncio.gather(*pending) == [[0], [2], [4], [6], [8], [10]]
        await b.stop()

    run(scenario)


def test_a_failed_second_stage_fails_its_batch_only_and_stop_waits_for_second_stages():
    async def scenario():
        runner = PipelinedRunner()
        runner.fail_second_on = 1
        runner.first_gate.set()
        b = batcher(runner, max_batch_size=2, max_queue_delay_ms=0)
        first = asyncio.create_task(b.submit([0, 1]))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.submit([2, 3]))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # both batches still in their second stage
        runner.second_gate.set()
        await stopping
        with pytest.raises(RuntimeError, match="inference failed on 1"):
            await first
        assert await second == [4, 6]

    run(scenario)


def test_a_runner_can_fail_one_item_and_its_caller_alone_sees_the_error():
    async def scenario():
        class Runner:
            async def start_batch(self, payloads: list) -> list:
                return payloads

            async def finish_batch(self, payloads: list) -> list:
                return [ValueError(f"bad {p}") if p == "bad" else p.upper() for p in payloads]

        b = DynamicBatcher(Runner(), max_batch_size=4, max_queue_delay_ms=50)
        b.start()
        good, bad = await asyncio.gather(b.submit(["a", "b"]), b.submit(["bad"]), return_exceptions=True)
        assert good == ["A", "B"]
        assert isinstance(bad, ValueError) and str(bad) == "bad bad"
        await b.stop()

    run(scenario)


# --- The runner protocol: start_batch(payloads) -> handle, then finish_batch(handle) -> outputs ---


class TwoStageRunner:
    """A BatchRunner whose handle is not its payloads: a numbered ticket, so the tests can check that
    finish_batch gets exactly what start_batch returned. Either stage can be held or made to fail."""

    def __init__(self) -> None:
        self.started: list[list] = []
        self.finished: list[int] = []  # tickets, in the order finish_batch received them
        self.start_gate, self.finish_gate = asyncio.Event(), asyncio.Event()
        self.start_gate.set()
        self.finish_gate.set()
        self.in_start = asyncio.Event()
        self.start_error: Exception | None = None
        self.finish_error: Exception | None = None
        self._batches: dict[int, list] = {}

    async def start_batch(self, payloads: list) -> int:
        ticket = len(self.started)
        self.started.append(list(payloads))
        self._batches[ticket] = list(payloads)
        self.in_start.set()
        await self.start_gate.wait()
        if self.start_error is not None:
            raise self.start_error
        return ticket

    async def finish_batch(self, ticket: int) -> list:
        self.finished.append(ticket)
        await self.finish_gate.wait()
        if self.finish_error is not None:
            raise self.finish_error
        return [p * 10 for p in self._batches.pop(ticket)]

    def computed(self) -> list:
        return [p for batch in self.started for p in batch]


def test_a_two_stage_runner_batches_concurrent_requests_and_finishes_each_handle_once():
    async def scenario():
        runner = TwoStageRunner()
        runner.start_gate.clear()
        b = batcher(runner, max_batch_size=3, max_queue_delay_ms=0)
        first = asyncio.create_task(b.submit([0]))
        await runner.in_start.wait()
        queued = [asyncio.create_task(b.submit([i, i + 1])) for i in (1, 3, 5)]  # queued while busy
        await asyncio.sleep(0.01)
        runner.start_gate.set()
        assert await asyncio.gather(first, *queued) == [[0], [10, 20], [30, 40], [50, 60]]
        assert runner.started == [[0], [1, 2, 3], [4, 5, 6]]  # full batches, a request split in order
        assert sorted(runner.finished) == [0, 1, 2]  # every handle finished, once
        await b.stop()

    run(scenario)


def test_a_request_whose_deadline_passes_in_the_queue_reaches_neither_stage():
    async def scenario():
        runner = TwoStageRunner()
        runner.start_gate.clear()
        b = batcher(runner, max_batch_size=4, max_queue_delay_ms=0)
        busy = asyncio.create_task(b.submit([1]))
        await runner.in_start.wait()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # the worker's deadline
                await b.submit([7, 8])
        left = asyncio.create_task(b.submit([9]))
        await asyncio.sleep(0)
        left.cancel()  # the client went away
        await asyncio.sleep(0)
        assert b.queue_depth == 0
        runner.start_gate.set()
        assert await busy == [10]
        assert await b.submit([2]) == [20]
        assert runner.computed() == [1, 2]
        await b.stop()

    run(scenario)


def test_an_exception_in_start_batch_answers_every_request_of_that_batch():
    async def scenario():
        runner = TwoStageRunner()
        runner.start_gate.clear()
        b = batcher(runner, max_batch_size=4, max_queue_delay_ms=0)
        first = asyncio.create_task(b.submit([0]))
        await runner.in_start.wait()
        batch = [asyncio.create_task(b.submit(p)) for p in ([1], [2, 3], [4])]
        await asyncio.sleep(0.01)
        runner.start_error = RuntimeError("device out of memory")
        runner.start_gate.set()
        results = await asyncio.gather(first, *batch, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in results)
        assert runner.started == [[0], [1, 2, 3, 4]]  # two batches, each failed as a whole
        runner.start_error = None
        assert await b.submit([5]) == [50]  # the batcher carries on
        await b.stop()

    run(scenario)


def test_an_exception_in_finish_batch_answers_every_request_of_that_batch_and_no_other():
    async def scenario():
        runner = TwoStageRunner()
        runner.finish_gate.clear()
        b = batcher(runner, max_batch_size=3, max_queue_delay_ms=0)
        failing = [asyncio.create_task(b.submit(p)) for p in ([1], [2, 3])]
        await asyncio.sleep(0.01)
        assert runner.finished == [0]  # batch 0 waits in finish_batch; the runner is free again
        runner.finish_error = RuntimeError("CUDA error: an illegal memory access")
        runner.finish_gate.set()
        results = await asyncio.gather(*failing, return_exceptions=True)
        assert [type(r) for r in results] == [RuntimeError, RuntimeError]
        assert results[0] is results[1]  # one failure, delivered to each caller of the batch
        runner.finish_error = None
        assert await b.submit([4]) == [40]
        await b.stop()

    run(scenario)


def test_a_caller_leaving_after_its_batch_started_does_not_disturb_the_others_in_it():
    async def scenario():
        runner = TwoStageRunner()
        runner.finish_gate.clear()
        b = batcher(runner, max_batch_size=4, max_queue_delay_ms=10_000, preferred_batch_sizes=[3])
        stays = asyncio.create_task(b.submit([1, 2]))
        leaves = asyncio.create_task(b.submit([3]))
        await asyncio.sleep(0.01)
        assert runner.started == [[1, 2, 3]] and runner.finished == [0]
        leaves.cancel()  # too late to save the work: the batch is computed, this result dropped
        with pytest.raises(asyncio.CancelledError):
            await leaves
        runner.finish_gate.set()
        assert await stays == [10, 20]
        await b.stop()

    run(scenario)


def test_outputs_that_cannot_be_delivered_answer_the_batch_with_the_error_instead_of_hanging(caplog):
    class NoLength(FakeRunner):
        async def finish_batch(self, outputs: list) -> object:
            return iter(outputs)  # a runner bug: no len(), so the batcher cannot match outputs to items

    async def scenario():
        b = batcher(NoLength(), max_batch_size=2, max_queue_delay_ms=0)
        results = await asyncio.gather(b.submit([1]), b.submit([2]), return_exceptions=True)
        assert [type(r) for r in results] == [TypeError, TypeError]
        await b.stop()

    run(scenario)
    assert "delivering a batch of" in caplog.text
