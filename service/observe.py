"""Per-request accounting for the prediction routes: request count and duration, in-flight gauge.

Pure ASGI, so it sees the final status of every response, including the ones the error handlers
write. Routes put ``(model, version)`` on ``request.state.model_labels`` once they know them.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics

__all__ = ["RequestMetricsMiddleware", "protocol_of"]


def protocol_of(path: str) -> str | None:
    """``v1`` or ``v2`` for the prediction routes, None for everything else (health, metadata, metrics)."""
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = protocol_of(scope.get("path", "")) if scope["type"] == "http" else None
        if protocol is None:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.metrics.inflight.dec()
            model, version = scope.get("state", {}).get("model_labels", ("", ""))
            self.metrics.requests.labels(model, version, protocol, str(status)).inc()
            self.metrics.request_duration.labels(model, version, protocol).observe(
                time.perf_counter() - started
            )
