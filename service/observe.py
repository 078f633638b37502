"""Per-request observation: ``X-Request-ID``, metrics for the prediction routes, one log line each.

Pure ASGI, so it sees the final status of every response, including the ones the error handlers
write. Routes put ``model_labels``, ``images`` and ``timings`` on ``request.state`` once known.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics

__all__ = ["RequestObserverMiddleware", "protocol_of"]

log = logging.getLogger("imgcls.request")

VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def protocol_of(path: str) -> str | None:
    """``v1`` or ``v2`` for the prediction routes, ``explain`` for KServe v1's explain verb, None for
    everything else (health, metadata, metrics, the page)."""
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v1/models/") and path.endswith(":explain"):
        return "explain"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


def _request_id(scope: Scope) -> str:
    given = next((v for k, v in scope.get("headers", []) if k == b"x-request-id"), b"").decode("latin-1")
    # A caller's id is kept when it is a sane token; anything else (too long, odd characters) is replaced.
    return given if VALID_REQUEST_ID.match(given) else uuid.uuid4().hex


class RequestObserverMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        protocol = protocol_of(scope.get("path", ""))
        status = 500
        started = time.perf_counter()

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        if protocol is None:
            await self.app(scope, receive, observing_send)
            return
        self.metrics.inflight_count += 1
        try:
            await self.app(scope, receive, observing_send)
        finally:
            self.metrics.inflight_count -= 1
            seconds = time.perf_counter() - started
            model, version = state.get("model_labels", ("", ""))
            if protocol == "explain":  # kept out of the prediction series the dashboards and alerts read
                self.metrics.explain_requests.labels(model, version, str(status)).inc()
            else:
                self.metrics.requests.labels(model, version, protocol, str(status)).inc()
                self.metrics.request_duration.labels(model, version, protocol).observe(seconds)
            queue_seconds = state.get("timings", {}).get("queue_seconds")
            log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": request_id,
                    "protocol": protocol,
                    "model": model or None,
                    "version": version or None,
                    "images": state.get("images"),
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                    "queue_ms": round(queue_seconds * 1000, 3) if queue_seconds is not None else None,
                },
            )
