"""KServe v1 (the friendly JSON protocol): list models, describe one, predict.

``POST /v1/models/{name}:predict`` takes ``{"instances": [{"b64": "..."}], "parameters": {"top_k": 5}}``
or ``multipart/form-data`` with files in fields named ``file``, and answers one prediction per
image, in order.
"""

from __future__ import annotations

import asyncio
import binascii

import numpy as np
from fastapi import APIRouter, Request

from service.errors import BadInputError, UnsupportedMediaTypeError
from service.jsonlimits import load_json
from service.routes_common import parse_body, registry, top_k_indices, until_disconnect
from service.v2_codec import decode_base64
from service.worker import ModelWorker

__all__ = ["router"]

router = APIRouter()


def predictions(worker: ModelWorker, probabilities: np.ndarray, k: int) -> list[dict]:
    labels = worker.ref.manifest.labels
    out = []
    for row, order in zip(probabilities, top_k_indices(probabilities, k), strict=True):
        ranked = [{"label": labels[i], "index": int(i), "score": float(row[i])} for i in order]
        out.append({**ranked[0], "top_k": ranked})
    return out


def _parse_top_k(parameters: object, num_classes: int) -> int:
    if parameters is None:
        return min(5, num_classes)
    if not isinstance(parameters, dict):
        raise BadInputError('"parameters" must be an object, e.g. {"top_k": 5}')
    k = parameters.get("top_k", min(5, num_classes))
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise BadInputError(f'"parameters.top_k" must be a positive integer, got {k!r}')
    return min(k, num_classes)


def _decode_instances(body: bytes, max_json_depth: int) -> tuple[list[bytes], object]:
    payload = load_json(body, max_json_depth, "body")
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise BadInputError('expected a JSON object with "instances": [{"b64": "<base64 image>"}, ...]')
    images = []
    for index, instance in enumerate(payload["instances"]):
        encoded = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(encoded, str):
            raise BadInputError(f'instance {index}: expected {{"b64": "<base64 of an image file>"}}')
        try:
            images.append(decode_base64(encoded))
        except (binascii.Error, ValueError):
            raise BadInputError(f"instance {index}: b64 is not valid base64") from None
    return images, payload.get("parameters")


async def _read_images(request: Request) -> tuple[list[bytes], object]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        max_images = request.app.state.settings.max_images_per_request
        async with request.form(max_files=max_images + 1) as form:  # closes the spooled files
            images = []
            for item in form.getlist("file"):
                if isinstance(item, str):
                    raise BadInputError('multipart field "file" must carry a file, not text')
                images.append(await item.read())
            top_k = form.get("top_k")
        parameters = (
            {"top_k": int(top_k)} if isinstance(top_k, str) and top_k.isascii() and top_k.isdigit() else None
        )
        return images, parameters
    if content_type in ("application/json", ""):
        return await parse_body(
            request, await request.body(), _decode_instances, request.app.state.settings.max_json_depth
        )
    raise UnsupportedMediaTypeError(
        f"content type {content_type!r} is not accepted here; send application/json or multipart/form-data"
    )


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"models": registry(request).names}


@router.get("/v1/models/{name}")
async def model_status(name: str, request: Request) -> dict:
    worker = registry(request).get(name)
    versions = registry(request).workers[name]
    return {
        "name": name,
        "ready": worker.ready,
        "versions": [
            {"version": str(v), "ready": w.ready, **({"error": w.error} if w.error else {})}
            for v, w in sorted(versions.items())
        ],
    }


async def _predict(request: Request, name: str, version: int | None) -> dict:
    arrived_at = asyncio.get_running_loop().time()  # the deadline covers reading the body too
    worker = registry(request).get(name, version)
    request.state.model_labels = (worker.name, str(worker.version))
    worker.require_ready()  # answer 503 before reading a body we cannot use
    worker.admission.check_room()
    images, parameters = await _read_images(request)
    if not images:
        raise BadInputError('no images: send at least one instance ({"b64": ...}) or one multipart "file"')
    limit = request.app.state.settings.max_images_per_request
    if len(images) > limit:
        raise BadInputError(
            f"{len(images)} images in one request; the limit is {limit} (max_images_per_request)"
        )
    k = _parse_top_k(parameters, worker.ref.manifest.num_classes)
    request.state.images = len(images)
    request.state.timings = timings = {}
    probabilities = await until_disconnect(
        request, worker.predict_images(images, timings=timings, arrived_at=arrived_at)
    )
    return {
        "model_name": name,
        "model_version": str(worker.version),
        "predictions": predictions(worker, probabilities, k),
    }


@router.post("/v1/models/{name}:predict")
async def predict(name: str, request: Request) -> dict:
    return await _predict(request, name, None)


@router.post("/v1/models/{name}/versions/{version}:predict")
async def predict_version(name: str, version: int, request: Request) -> dict:
    return await _predict(request, name, version)
