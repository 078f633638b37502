"""The FastAPI application: wiring only. Models load in the lifespan, never at import.

uvicorn service.app:create_app --factory     (settings from IMGCLS_* environment variables)
imgcls serve --model-repo models/             (the same, with CLI flags)
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import start_http_server
from starlette.exceptions import HTTPException as StarletteHTTPException

import imgcls
from imgcls.errors import describe_validation_errors
from service import routes_feedback, routes_health, routes_ui, routes_v1, routes_v2
from service.auth import ApiKeyMiddleware, load_api_keys
from service.errors import (
    ServiceError,
    error_response,
    service_error_response,
)
from service.feedback.gateway import FeedbackGateway
from service.limits import BodyLimitMiddleware
from service.logs import LifespanErrorLogging
from service.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from service.observe import RequestObserverMiddleware
from service.registry import ModelRegistry
from service.settings import Settings

__all__ = ["create_app"]


log = logging.getLogger("imgcls.app")


async def _load_then_freeze(registry: ModelRegistry) -> None:
    await registry.load_all()
    # What is alive now (torch, the runtimes, the app) lives as long as the process. Out of the cyclic
    # collector's sight, a full collection no longer walks it with the GIL held, stalling every thread.
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings, observers=[metrics])
        registry.repository.require_root()  # a missing repository stops start-up here, with its message
        app.state.registry = registry
        metrics_server = None
        if settings.metrics_port is not None:  # a separate port, e.g. kept off the public Service
            metrics_server, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=metrics.registry
            )
        # Models load in the background so /healthz answers at once and /readyz reports progress.
        loading = asyncio.create_task(_load_then_freeze(registry), name="load-models")
        # The feedback store opens beside them; down or not, it never holds up start-up or predictions.
        feedback = (
            FeedbackGateway(settings.feedback_url, max_bytes_per_model=settings.feedback_max_bytes_per_model)
            if settings.feedback_enabled
            else None
        )
        app.state.feedback = feedback
        opening = asyncio.create_task(feedback.open(), name="open-feedback") if feedback else None
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await registry.stop(drain=True)
            if opening is not None:
                await asyncio.gather(opening, return_exceptions=True)
            if feedback is not None:
                await feedback.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()

    largest_batch = max(
        [settings.batching.max_batch_size]
        + [o.max_batch_size for o in settings.models.values() if o.max_batch_size]
    )
    app = FastAPI(title="imgcls", version=imgcls.__version__, lifespan=lifespan)
    metrics = ServiceMetrics(  # the registry exists once the lifespan has made it
        largest_batch, workers=lambda: app.state.registry.all() if hasattr(app.state, "registry") else []
    )
    app.state.settings = settings
    app.state.metrics = metrics
    # A failed start-up is one log line, without a traceback when imgcls raised it on purpose (added
    # first, so innermost of ours: the others pass the lifespan through to it).
    app.add_middleware(LifespanErrorLogging)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        on_reject=lambda: metrics.rejected.labels("", "", "too_large").inc(),
    )
    app.add_middleware(RequestObserverMiddleware, metrics=metrics)
    app.add_middleware(  # outermost: nothing runs for a request without a valid key
        ApiKeyMiddleware,
        keys=load_api_keys(settings.api_keys, settings.api_keys_file),
        protect_health=settings.auth_health,
        protect_metrics=settings.auth_metrics,
        on_reject=lambda: metrics.rejected.labels("", "", "unauthorized").inc(),
    )

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.reject_reason is not None:
            model, version = getattr(request.state, "model_labels", ("", ""))
            counter = (
                metrics.explain_rejected if getattr(request.state, "explaining", False) else metrics.rejected
            )
            counter.labels(model, version, exc.reject_reason).inc()
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(
            400, describe_validation_errors(exc.errors(), with_input=False, first_only=True)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "no such route; see /docs for the endpoints" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details")

    if settings.metrics_port is None:

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics() -> Response:
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(routes_health.router)
    app.include_router(routes_v1.router)
    app.include_router(routes_v2.router)
    app.include_router(routes_feedback.router)
    app.include_router(routes_ui.router)
    return app
