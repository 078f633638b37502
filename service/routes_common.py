"""What every protocol's routes share: error bodies, and answering only clients that are still there."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from service.decisions import top_k_indices  # re-exported: the routes rank with it
from service.errors import (
    BadInputError,
    ClientDisconnectedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from service.registry import ModelRegistry

__all__ = [
    "decompress",
    "off_loop",
    "parse_body",
    "registry",
    "top_k_indices",
    "until_disconnect",
]

log = logging.getLogger("imgcls.routes")

T = TypeVar("T")


def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def off_loop(request: Request, fn: Callable[..., T], *args: object) -> T:
    """Run CPU-bound request parsing on the decode pool, keeping the event loop free."""
    return await asyncio.get_running_loop().run_in_executor(registry(request).decode_pool, fn, *args)


# Up to this size a body parses (JSON, depth check, base64) in about 0.4 ms on the 2-core test
# machine, worst case (all brackets) 3.5 ms: cheaper than the hop to the decode pool and back, which
# at one client was a large part of what imgcls added over the model itself. Bigger bodies go off the loop.
INLINE_PARSE_BYTES = 64 * 1024


async def parse_body(request: Request, body: bytes, fn: Callable[..., T], *args: object) -> T:
    """``fn(body, *args)``: on the event loop for small bodies, on the decode pool for large ones."""
    if len(body) <= INLINE_PARSE_BYTES:
        return fn(body, *args)
    return await off_loop(request, fn, body, *args)


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient's request compression), bounded by ``max_bytes``."""
    if not encoding or encoding.lower() == "identity":
        return body
    kind = encoding.lower()
    if kind not in ("gzip", "deflate"):
        raise UnsupportedMediaTypeError(
            f"content encoding {encoding!r} is not supported; send gzip, deflate or none"
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if kind == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise BadInputError(f"the {kind} body does not decompress ({exc})") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"the decompressed body is over the limit of {max_bytes} bytes")
    return data


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
            log.info("client disconnected; dropped its queued images")
            raise ClientDisconnectedError("the client closed the connection before the answer was ready")
        return task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # the client left, or this handler was cancelled: drop the queued work


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
