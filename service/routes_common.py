"""What every protocol's routes share: error bodies, and answering only clients that are still there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse

from service.errors import ServiceError
from service.registry import ModelRegistry

__all__ = ["error_response", "registry", "until_disconnect"]

log = logging.getLogger("imgcls.routes")

T = TypeVar("T")


def error_response(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def service_error_response(exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, str(exc), exc.retry_after_s)


def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client goes away (its queued images are then never computed).

    Call after the body has been read: from then on the only message ``receive`` can bring is the
    disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            log.info("client disconnected; dropped its queued images")
            raise asyncio.CancelledError
        return task.result()
    finally:
        watcher.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
