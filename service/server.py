"""`imgcls serve`'s uvicorn server, with Kubernetes-friendly graceful shutdown.

On SIGTERM (or the first Ctrl-C): readiness turns false at once and new prediction requests get 503
with Retry-After, so the load balancer stops sending traffic; every request already accepted
(queued or computing) is completed; then uvicorn stops, and the lifespan drains the batchers. If
the grace period passes first, the server stops anyway: the grace period bounds the whole wait,
uvicorn's own wait for connections included. A second signal stops it at once, without waiting for
anything (uvicorn's force exit), and the process ends by that signal.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from service.errors import ImgclsError
from service.settings import Settings

__all__ = ["DrainingServer", "serve"]

log = logging.getLogger("imgcls.server")


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, app: FastAPI, grace_s: float, min_drain_s: float = 1.0
    ) -> None:
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s
        self.min_drain_s = min(min_drain_s, grace_s)
        self._draining = False

    def handle_exit(self, sig: int, frame: object) -> None:
        if self._draining:  # a second signal: stop now, waiting for no connection or task
            super().handle_exit(sig, frame)  # records the signal, which uvicorn re-raises on its way out
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        registry = getattr(self.app.state, "registry", None)
        if registry is None:  # still starting: nothing accepted yet
            super().handle_exit(sig, frame)
            return
        registry.draining = True
        log.info("shutdown requested: not ready, refusing new work, finishing accepted requests")
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        metrics = self.app.state.metrics
        registry = self.app.state.registry
        started = time.monotonic()
        deadline = started + self.grace_s
        while time.monotonic() < deadline:
            queued = sum(w.batcher.queue_depth for w in registry.all() if w.batcher is not None)
            if metrics.inflight_count == 0 and queued == 0 and time.monotonic() - started >= self.min_drain_s:
                break
            await asyncio.sleep(0.02)
        else:
            log.warning("grace period of %.0f s passed with requests still in flight; stopping", self.grace_s)
        # uvicorn then waits timeout_graceful_shutdown for connections to close: only what is left of
        # the grace period, so the two waits together never exceed it.
        self.config.timeout_graceful_shutdown = max(0.0, deadline - time.monotonic())
        self.should_exit = True


def serve(settings: Settings) -> None:
    """Run the service until SIGTERM/SIGINT: logging configured, one process, graceful shutdown."""
    from service.app import create_app
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    application = create_app(settings)
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the handlers configure_logging installed
        access_log=False,
        workers=1,  # each process would load every model and batch only its own requests (docs/serving.md, Dynamic batching)
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)),
    )
    server = DrainingServer(config, application, settings.shutdown_grace_s, settings.shutdown_min_drain_s)
    try:
        server.run()
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        # uvicorn exits with its own code 3 when the app fails to start or the port cannot be bound; the
        # log above has the reason. The command line's code for a failure while running is 1.
        raise ImgclsError("the service did not start; the log lines above say why") from None
