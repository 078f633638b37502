"""Admission on its own: a limit on images held from acceptance to answer, released once on every path."""

from __future__ import annotations

import asyncio

import pytest

from service.admission import Admission
from service.errors import BadInputError, QueueFullError


def test_images_are_held_for_the_block_and_released_after_it():
    admission = Admission(max_queue_size=4)
    with admission.admit(3):
        assert admission.pending == 3
        with admission.admit(1):
            assert admission.pending == 4
        assert admission.pending == 3
    assert admission.pending == 0


def test_a_request_that_does_not_fit_now_is_refused_and_holds_nothing():
    admission = Admission(max_queue_size=4)
    with admission.admit(3):
        with pytest.raises(QueueFullError, match=r"queue full \(3 of 4 images accepted"), admission.admit(2):
            pass
        assert admission.pending == 3
    with admission.admit(4):  # answered: the room is back
        assert admission.pending == 4


def test_check_room_refuses_only_when_not_one_more_image_fits():
    admission = Admission(max_queue_size=4)
    with admission.admit(3):
        admission.check_room()  # room for one: the request's own count decides, once it is known
        with admission.admit(1), pytest.raises(QueueFullError, match=r"queue full \(4 of 4"):
            admission.check_room()
    admission.check_room()
    admission.close()
    with pytest.raises(QueueFullError, match="shutting down"):
        admission.check_room()


def test_a_request_larger_than_the_limit_is_bad_input_not_retryable():
    admission = Admission(max_queue_size=4)
    with pytest.raises(BadInputError, match="can never fit this model's queue of 4"), admission.admit(5):
        pass
    assert admission.pending == 0


@pytest.mark.parametrize("failure", [ValueError("bad image"), TimeoutError(), KeyboardInterrupt()])
def test_every_way_out_of_the_block_releases_exactly_once(failure):
    admission = Admission(max_queue_size=4)
    with pytest.raises(type(failure)), admission.admit(2):
        raise failure
    assert admission.pending == 0


def test_a_cancelled_task_releases_its_images():
    async def scenario() -> int:
        admission = Admission(max_queue_size=4)
        held = asyncio.Event()

        async def request() -> None:
            with admission.admit(3):
                held.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(request())
        await held.wait()
        assert admission.pending == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return admission.pending

    assert asyncio.run(scenario()) == 0


def test_closed_refuses_new_requests_and_keeps_those_admitted():
    admission = Admission(max_queue_size=4)
    with admission.admit(1):
        admission.close()
        with pytest.raises(QueueFullError, match="shutting down"), admission.admit(1):
            pass
        assert admission.pending == 1
    assert admission.pending == 0
