"""Structured logs: one JSON object per line, for log pipelines (Loki, Cloud Logging, Elasticsearch).

Fields passed with ``extra=`` (request_id, model, version, images, status, latency_ms, ...) become
top-level keys. Never log image bytes, request bodies or keys.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgcls.errors import ImgclsError, describe_error

__all__ = ["JsonFormatter", "LifespanErrorLogging", "configure_logging"]

log = logging.getLogger("imgcls.app")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Root logging for `imgcls serve`: our loggers at ``level``, libraries at warning; JSON or text lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("imgcls").setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True  # our request line replaces the access log


class LifespanErrorLogging:
    """Logs a failed start-up or shutdown once: an error imgcls raised on purpose (:class:`ImgclsError`,
    whose message says what to fix) as that message alone, anything else with its traceback.

    Starlette reports whatever the lifespan raised to the server as a formatted traceback, which
    uvicorn logs as the message of one error line. This ASGI middleware holds that report back,
    logs the exception itself, and sends the report on without the text; uvicorn then logs only
    "Application startup failed. Exiting.".
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_failures(message: Message) -> None:
            if message["type"] in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
                held.append(message)  # sent below, once the exception it reports is known
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failures)
        except BaseException as exc:
            if not held:  # raised outside the lifespan's report: uvicorn logs it, traceback and all
                raise
            phase = held[0]["type"].split(".")[1]
            if isinstance(exc, ImgclsError):
                log.error("%s failed: %s", phase, exc)
            else:
                log.error("%s failed: %s", phase, describe_error(exc), exc_info=exc)
            await send({**held[0], "message": ""})
            raise
        else:
            for message in held:  # a failure reported without raising: pass the report on as it is
                await send(message)
