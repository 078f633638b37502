"""Request body limit, enforced while the body streams in (never after buffering all of it)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLargeError, error_response

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    """Answers 413 as soon as Content-Length, or the bytes actually received, pass ``max_body_bytes``."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, on_reject: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._on_reject = on_reject  # counts the rejections this middleware answers itself

    def _message(self) -> str:
        return f"request body is over the limit of {self.max_body_bytes} bytes; send fewer or smaller images"

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._on_reject is not None:
            self._on_reject()
        await error_response(413, self._message())(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await self._reject(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLargeError(self._message())  # answered 413 by the app's error handler
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLargeError:  # raised where no handler runs (e.g. while a form streams)
            if not started:
                await self._reject(scope, receive, send)
