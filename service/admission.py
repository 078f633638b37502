"""Admission: how many images one model version holds at once, counted from acceptance to answer.

An image counts from the moment its request is admitted until the request is answered, wherever it
waits meanwhile: for a decode thread, decoding, in the batcher's queue, or in a batch being
computed. A request that would take the count past ``max_queue_size`` is refused at once (503), as
Triton's queue policy refuses what it cannot hold, so an overloaded server answers "retry" quickly
instead of letting accepted requests wait past their deadline. Plain Python: no asyncio, no HTTP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from service.errors import BadInputError, QueueFullError

__all__ = ["Admission"]


class Admission:
    """A counter with a limit: :meth:`admit` holds ``count`` images for the duration of a ``with`` block."""

    def __init__(self, max_queue_size: int) -> None:
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        self.max_queue_size = max_queue_size
        self._pending = 0
        self._closed = False

    @property
    def pending(self) -> int:
        """Images admitted and not yet answered."""
        return self._pending

    def close(self) -> None:
        """Refuse every later request (shutting down); requests already admitted keep their places."""
        self._closed = True

    def check_room(self) -> None:
        """Raise :class:`QueueFullError` now if not even one more image would be admitted.

        Routes call it before reading a body: under overload, a refusal costs no upload or parsing.
        """
        if self._closed or self._pending >= self.max_queue_size:
            self._refuse()

    def _refuse(self) -> None:
        if self._closed:
            raise QueueFullError("the model is shutting down; retry against another replica")
        raise QueueFullError(
            f"queue full ({self._pending} of {self.max_queue_size} images accepted and not yet "
            "answered); retry shortly"
        )

    @contextlib.contextmanager
    def admit(self, count: int) -> Iterator[None]:
        """Hold ``count`` images until the block ends, however it ends (answer, error, deadline, cancel).

        Raises :class:`BadInputError` when ``count`` alone exceeds the limit (retrying cannot help)
        and :class:`QueueFullError` when the images do not fit now, or after :meth:`close`.
        """
        if count > self.max_queue_size:
            raise BadInputError(
                f"{count} images in one request can never fit this model's queue of {self.max_queue_size}; "
                "split the request"
            )
        if self._closed or self._pending + count > self.max_queue_size:
            self._refuse()
        self._pending += count
        try:
            yield
        finally:
            self._pending -= count
