"""The service's door to the feedback store: opened in the background, retried while it is down, and
every call on a thread of its own so the event loop never waits on the database.

A store that cannot be reached never stops the server or its predictions: each flag then fails with
the reason (503), and the next flag after ``RETRY_OPEN_S`` tries to open it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.feedback.store import FeedbackStore, StoreUnavailableError, open_store

__all__ = ["FeedbackGateway"]

log = logging.getLogger("imgcls.feedback")

T = TypeVar("T")

RETRY_OPEN_S = 10.0  # after a failed open, flags fail fast for this long before the next try


class FeedbackGateway:
    def __init__(self, url: str, *, max_bytes_per_model: int | None, threads: int = 4) -> None:
        self.url = url
        self.max_bytes_per_model = max_bytes_per_model
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="feedback")
        self._store: FeedbackStore | None = None
        self._opening: asyncio.Future | None = None
        self._failed_at: float | None = None
        self.error: str | None = None

    async def open(self) -> None:
        """Try to open the store (at start-up, in the background); a failure is logged and kept."""
        try:
            await self.store()
        except StoreUnavailableError as exc:
            log.error("feedback store unavailable (flags answer 503 until it is back): %s", exc)

    async def store(self) -> FeedbackStore:
        if self._store is not None:
            return self._store
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_OPEN_S:
            raise StoreUnavailableError(self.error or "the feedback store is unavailable")
        if self._opening is None:
            loop = asyncio.get_running_loop()
            self._opening = loop.run_in_executor(
                self._executor, lambda: open_store(self.url, max_bytes_per_model=self.max_bytes_per_model)
            )
        opening = self._opening
        try:
            store = await asyncio.shield(opening)
        except StoreUnavailableError as exc:
            self._failed(str(exc))
            raise
        except Exception as exc:  # a driver can raise anything while connecting
            self._failed(f"{type(exc).__name__}: {exc}")
            raise StoreUnavailableError(self.error) from None
        if self._store is None:
            self._store, self.error, self._failed_at = store, None, None
            log.info("feedback store ready: %s", store.url)
        if self._opening is opening:
            self._opening = None
        return self._store

    def _failed(self, reason: str) -> None:
        self.error, self._failed_at, self._opening = reason, time.monotonic(), None

    async def run(self, fn, *args) -> T:
        """``fn(store, *args)`` on a feedback thread."""
        store = await self.store()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, store, *args)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        await asyncio.to_thread(self._executor.shutdown, wait=True)
