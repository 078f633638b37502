"""Flag a mistake: ``POST /v1/models/{name}[/versions/{v}]/feedback`` stores the image and the correct
label (``service.feedback``), for the next training run.

JSON: ``{"b64": "<image>", "correct_label": "cat" | null, "predicted_label": "dog",
"scores": {"dog": 0.8, ...}, "note": "...", "request_id": "<X-Request-ID of the prediction>"}``;
multipart: the image in ``file`` and the rest as fields (``scores`` as JSON text; an empty
``correct_label`` is "none of these"). 201 with the record's id.
"""

from __future__ import annotations

import binascii
import io
import json
import math

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from imgcls.errors import describe_labels
from service.errors import BadInputError, ServiceError, UnsupportedMediaTypeError
from service.feedback.store import NewFeedback, StoreFullError, StoreUnavailableError
from service.jsonlimits import load_json
from service.observe import VALID_REQUEST_ID
from service.preprocess import Preprocessor
from service.routes_common import off_loop, parse_body, registry
from service.v2_codec import decode_base64

__all__ = ["router"]

router = APIRouter()

MAX_NOTE_CHARS = 2000
_FIELDS = ("correct_label", "predicted_label", "scores", "note", "request_id")


class FeedbackUnavailableError(ServiceError):
    status = 503
    retry_after_s = 10


class FeedbackStoreFullError(ServiceError):
    status = 507


def _parse_json(body: bytes, max_json_depth: int) -> tuple[bytes, dict]:
    payload = load_json(body, max_json_depth, "body")
    if not isinstance(payload, dict):
        raise BadInputError(
            'expected a JSON object: {"b64": "<base64 image>", "correct_label": "<label>" | null}'
        )
    encoded = payload.get("b64")
    if isinstance(payload.get("image"), dict):  # {"image": {"b64": ...}}, an instance as :predict takes it
        encoded = payload["image"].get("b64")
    if not isinstance(encoded, str):
        raise BadInputError('"b64": the flagged image, base64-encoded, is required')
    if "correct_label" not in payload:
        raise BadInputError(
            '"correct_label" is required: one of the model\'s labels, or null for "none of these"'
        )
    try:
        image = decode_base64(encoded)
    except (binascii.Error, ValueError):
        raise BadInputError('"b64" is not valid base64') from None
    return image, {key: payload.get(key) for key in _FIELDS}


async def _read(request: Request) -> tuple[bytes, dict]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=2) as form:
            files = form.getlist("file")
            if len(files) != 1 or isinstance(files[0], str):
                raise BadInputError('multipart: send exactly one image in the field "file"')
            image = await files[0].read()
            if "correct_label" not in form:
                raise BadInputError('multipart field "correct_label" is required (empty for "none of these")')
            fields = {key: form.get(key) for key in _FIELDS}
        for key, value in fields.items():
            if value is not None and not isinstance(value, str):
                raise BadInputError(f'multipart field "{key}" must be text')
        fields = {key: (value or None) for key, value in fields.items()}
        if fields["scores"] is not None:
            try:
                fields["scores"] = json.loads(fields["scores"])
            except ValueError:
                raise BadInputError('multipart field "scores" must be JSON, e.g. {"dog": 0.8}') from None
        return image, fields
    if content_type in ("application/json", ""):
        return await parse_body(
            request, await request.body(), _parse_json, request.app.state.settings.max_json_depth
        )
    raise UnsupportedMediaTypeError(
        f"content type {content_type!r} is not accepted here; send application/json or multipart/form-data"
    )


def _label(value: object, field: str, labels: tuple[str, ...], *, allow_none: bool) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in labels:
        raise BadInputError(
            f'"{field}" {value!r} is not a label of this model; its labels: {describe_labels(labels)}'
        )
    return value


def _scores(value: object, labels: tuple[str, ...]) -> dict[str, float] | None:
    """A label -> score object, or the ``top_k`` list a prediction returned."""
    if value is None:
        return None
    if isinstance(value, list):
        if not all(isinstance(item, dict) and "label" in item and "score" in item for item in value):
            raise BadInputError(
                '"scores" as a list must hold {"label": ..., "score": ...} objects, as top_k does'
            )
        value = {item["label"]: item["score"] for item in value}
    if not isinstance(value, dict) or len(value) > len(labels):
        raise BadInputError('"scores" must be an object of label -> score, at most one per label')
    scores = {}
    for label, score in value.items():
        _label(label, "scores", labels, allow_none=False)
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise BadInputError(f'"scores": the score of {label!r} must be a finite number, got {score!r}')
        scores[label] = float(score)
    return scores


def _checked_format(preprocessor: Preprocessor, image: bytes) -> str:
    """The image's format, after checking it decodes within the limits as a prediction's would."""
    from PIL import Image

    preprocessor.decode(image)  # BadInputError names what is wrong
    with Image.open(io.BytesIO(image)) as opened:
        return str(opened.format)


async def _feedback(request: Request, name: str, version: int | None) -> JSONResponse:
    worker = registry(request).get(name, version)
    labels_for_metrics = (worker.name, str(worker.version))
    request.state.model_labels = labels_for_metrics
    metrics = request.app.state.metrics
    gateway = request.app.state.feedback
    try:
        if gateway is None:
            raise FeedbackUnavailableError(
                "feedback is switched off on this server (IMGCLS_FEEDBACK_ENABLED=false)"
            )
        manifest = worker.ref.manifest
        image, fields = await _read(request)
        labels = manifest.labels
        note = fields["note"]
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
            raise BadInputError(f'"note" must be text of at most {MAX_NOTE_CHARS} characters')
        request_id = fields["request_id"]
        if request_id is not None and (
            not isinstance(request_id, str) or not VALID_REQUEST_ID.match(request_id)
        ):
            raise BadInputError('"request_id" must be the X-Request-ID the prediction answered with')
        correct_label = _label(fields["correct_label"], "correct_label", labels, allow_none=True)
        predicted_label = _label(fields["predicted_label"], "predicted_label", labels, allow_none=True)
        scores = _scores(fields["scores"], labels)
        flag = NewFeedback(
            model=worker.name,
            version=worker.version,
            image=image,
            image_format=await off_loop(request, _checked_format, worker.preprocessor, image),
            correct_label=correct_label,
            predicted_label=predicted_label,
            scores=scores,
            note=note,
            request_id=request_id,
        )
        try:
            stored = await gateway.run(lambda store, f: store.add(f), flag)
        except StoreFullError as exc:
            raise FeedbackStoreFullError(str(exc)) from None
        except StoreUnavailableError as exc:
            raise FeedbackUnavailableError(f"the feedback store is unavailable: {exc}") from None
    except FeedbackUnavailableError:
        metrics.feedback.labels(*labels_for_metrics, "unavailable").inc()
        raise
    except FeedbackStoreFullError:
        metrics.feedback.labels(*labels_for_metrics, "full").inc()
        raise
    except ServiceError:
        metrics.feedback.labels(*labels_for_metrics, "rejected").inc()
        raise
    metrics.feedback.labels(*labels_for_metrics, "stored").inc()
    return JSONResponse(
        {"id": stored.id, "image_sha256": stored.image_sha256, "flag_count": stored.flag_count},
        status_code=201,
    )


@router.post("/v1/models/{name}/feedback")
async def feedback(name: str, request: Request) -> JSONResponse:
    return await _feedback(request, name, None)


@router.post("/v1/models/{name}/versions/{version}/feedback")
async def feedback_version(name: str, version: int, request: Request) -> JSONResponse:
    return await _feedback(request, name, version)
