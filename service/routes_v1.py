"""KServe v1 (the friendly JSON protocol): list models, describe one, predict, explain.

``POST /v1/models/{name}:predict`` takes ``{"instances": [{"b64": "..."}], "parameters": {"top_k": 5}}``
or ``multipart/form-data`` with files in fields named ``file``, and answers one prediction per
image, in order. ``:explain`` takes the same body (``parameters`` add ``label`` and ``method``) and
answers each prediction with its map (``service.explaining``: never through the batcher).
"""

from __future__ import annotations

import asyncio
import binascii

import numpy as np
from fastapi import APIRouter, Request

from service.decisions import labels_above, top_k_indices
from service.errors import BadInputError, UnsupportedMediaTypeError
from service.explaining import ExplainedImage, encode_b64
from service.jsonlimits import load_json
from service.routes_common import parse_body, registry, until_disconnect
from service.v2_codec import decode_base64
from service.worker import ModelWorker

__all__ = ["router"]

router = APIRouter()


def predictions(worker: ModelWorker, probabilities: np.ndarray, k: int) -> list[dict]:
    """Per image: the top label, ``top_k``, and for a multilabel bundle ``labels``, every label whose
    sigmoid score reaches its threshold, highest first (possibly none)."""
    manifest = worker.ref.manifest
    labels = manifest.labels
    thresholds = np.asarray(manifest.thresholds) if manifest.thresholds is not None else None
    out = []
    for row, order in zip(probabilities, top_k_indices(probabilities, k), strict=True):
        ranked = _entries(labels, row, order)
        prediction = {**ranked[0], "top_k": ranked}
        if thresholds is not None:
            prediction["labels"] = _entries(labels, row, labels_above(row, thresholds))
        out.append(prediction)
    return out


def _entries(labels: tuple[str, ...], row: np.ndarray, indices: np.ndarray) -> list[dict]:
    return [{"label": labels[i], "index": int(i), "score": float(row[i])} for i in indices]


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
            fields = {key: form.get(key) for key in ("top_k", "label", "method")}
        parameters: dict[str, object] = {
            key: value for key, value in fields.items() if isinstance(value, str) and value != ""
        }
        top_k = parameters.get("top_k")
        if isinstance(top_k, str):
            if not (top_k.isascii() and top_k.isdigit()):
                raise BadInputError(f'multipart field "top_k" must be a positive integer, got {top_k!r}')
            parameters["top_k"] = int(top_k)
        return images, parameters or None
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
            {
                "version": str(v),
                "ready": w.ready,
                **({"error": w.error} if w.error else {}),
                **({"labels": list(w.ref.manifest.labels), "task": w.ref.manifest.task} if w.ref.ok else {}),
                **(
                    {"thresholds": dict(zip(w.ref.manifest.labels, w.ref.manifest.thresholds, strict=True))}
                    if w.ref.ok and w.ref.manifest.thresholds is not None
                    else {}
                ),
                **({"explain": _explain_status(w)} if w.explanations is not None else {}),
            }
            for v, w in sorted(versions.items())
        ],
    }


def _explain_status(worker: ModelWorker) -> dict:
    """What the explain verb offers for a version: its methods (the default first), or why none."""
    explanations = worker.explanations
    assert explanations is not None
    if explanations.error is not None:
        return {"available": False, "error": explanations.error}
    return {"available": True, "methods": list(explanations.methods), "state": explanations.state}


async def _predict(request: Request, name: str, version: int | None) -> dict:
    arrived_at = asyncio.get_running_loop().time()  # the deadline covers reading the body too
    worker = registry(request).get(name, version)
    request.state.model_labels = (worker.name, str(worker.version))
    worker.require_ready()  # answer 503 before reading a body we cannot use
    worker.admission.check_room()
    images, parameters = await _read_images(request)
    _read_count_checked(images, request.app.state.settings.max_images_per_request)
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


def _read_count_checked(images: list[bytes], limit: int) -> None:
    if not images:
        raise BadInputError('no images: send at least one instance ({"b64": ...}) or one multipart "file"')
    if len(images) > limit:
        raise BadInputError(
            f"{len(images)} images in one request; the limit is {limit} (max_images_per_request)"
        )


def explanations(worker: ModelWorker, explained: list[ExplainedImage], k: int) -> list[dict]:
    labels = worker.ref.manifest.labels
    rows = predictions(worker, np.stack([e.probabilities for e in explained]), k)
    return [
        {
            **row,
            "explained_label": labels[e.explained_index],
            "explained_index": e.explained_index,
            "method": e.method,
            "map_png": encode_b64(e.map_png),
            "map_shape": list(e.map_shape),
            "overlay_png": encode_b64(e.overlay_png),
        }
        for row, e in zip(rows, explained, strict=True)
    ]


async def _explain(request: Request, name: str, version: int | None) -> dict:
    arrived_at = asyncio.get_running_loop().time()
    request.state.explaining = True  # refusals count as explain rejections
    worker = registry(request).get(name, version)
    request.state.model_labels = (worker.name, str(worker.version))
    explainer = worker.require_explanations()  # 501 or 503 before reading a body we cannot use
    images, parameters = await _read_images(request)
    _read_count_checked(images, request.app.state.settings.max_images_per_request)
    if parameters is not None and not isinstance(parameters, dict):
        raise BadInputError('"parameters" must be an object, e.g. {"label": "cat", "method": "gradcam"}')
    parameters = parameters or {}
    k = _parse_top_k(parameters, worker.ref.manifest.num_classes)
    label_index, method = explainer.resolve(parameters.get("label"), parameters.get("method"))
    request.state.images = len(images)
    explained = await until_disconnect(
        request, explainer.explain(images, label_index=label_index, method=method, arrived_at=arrived_at)
    )
    return {
        "model_name": name,
        "model_version": str(worker.version),
        "explanations": explanations(worker, explained, k),
    }


@router.post("/v1/models/{name}:explain")
async def explain(name: str, request: Request) -> dict:
    return await _explain(request, name, None)


@router.post("/v1/models/{name}/versions/{version}:explain")
async def explain_version(name: str, version: int, request: Request) -> dict:
    return await _explain(request, name, version)
