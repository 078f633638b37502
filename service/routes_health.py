"""Liveness and readiness for Kubernetes probes (the v2 protocol's own health routes live in routes_v2)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.routes_common import registry

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    models = {f"{w.name}/{w.version}": w.state for w in registry(request).all()}
    ready = registry(request).ready
    return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)
