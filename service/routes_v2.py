"""Open Inference Protocol v2 (KServe v2, Triton's HTTP API), as tritonclient.http speaks it.

Two inputs, a request gives exactly one: ``image`` (BYTES ``[-1]``, one encoded image file per
element) or ``pixels`` (FP32 ``[-1, C, H, W]``, already preprocessed). One output,
``probabilities`` (FP32 ``[-1, classes]``), also available through the classification extension.
"""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

import imgcls
from imgcls.manifest import Manifest
from service.errors import BadInputError
from service.routes_common import decompress, parse_body, registry, top_k_indices, until_disconnect
from service.v2_codec import InferRequest, OutputTensor, encode_infer_response, parse_infer_request
from service.worker import ModelWorker

__all__ = ["router"]

router = APIRouter(prefix="/v2")

OUTPUT_NAME = "probabilities"
_PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "torchscript": "pytorch_libtorch",
    "tensorrt": "tensorrt_plan",
}


def _platform(worker: ModelWorker) -> str:
    return _PLATFORMS[worker.runtime.name] if worker.runtime is not None else "imgcls"


def _metadata(worker: ModelWorker, versions: list[int]) -> dict:
    worker.require_ready()
    channels, height, width = worker.ref.manifest.input.shape
    return {
        "name": worker.name,
        "versions": [str(v) for v in versions],
        "platform": _platform(worker),
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "FP32", "shape": [-1, channels, height, width]},
        ],
        "outputs": [
            {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, worker.ref.manifest.num_classes]}
        ],
        "parameters": _trust(worker.ref.manifest),
    }


def _trust(manifest: Manifest) -> dict[str, str | float]:
    """What a client should know before trusting the answers (OIP parameters: scalars only)."""
    parameters: dict[str, str | float] = {"weights": manifest.weights}
    if "accuracy" in manifest.metrics:
        parameters["test_accuracy"] = manifest.metrics["accuracy"]
    if manifest.baseline_check is not None:
        parameters["baseline_check"] = "passed" if manifest.baseline_check.passed else "failed"
    parameters["task"] = manifest.task
    if manifest.thresholds is not None:
        # multilabel: probabilities are each label's sigmoid, a label predicted at its threshold
        # (OIP parameters hold scalars: the thresholds in label order, comma-separated)
        parameters["thresholds"] = ",".join(repr(float(t)) for t in manifest.thresholds)  # exact
    else:
        # the scores are softmax(logits / temperature): calibrated on the run's validation split
        parameters["temperature"] = manifest.temperature or 1.0
    warning = manifest.quality_warning
    if warning is not None:
        parameters["warning"] = warning
    return parameters


def _config(worker: ModelWorker) -> dict:
    worker.require_ready()
    channels, height, width = worker.ref.manifest.input.shape
    batching = worker.settings.batching
    dynamic: dict = {"max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000)}
    if batching.preferred_batch_sizes:
        dynamic["preferred_batch_size"] = list(batching.preferred_batch_sizes)
    return {
        "name": worker.name,
        "platform": _platform(worker),
        "max_batch_size": batching.max_batch_size,
        "input": [
            {
                "name": "image",
                "data_type": "TYPE_STRING",
                "dims": [1],
                "reshape": {"shape": []},
                "optional": True,
            },
            {"name": "pixels", "data_type": "TYPE_FP32", "dims": [channels, height, width], "optional": True},
        ],
        "output": [
            {"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [worker.ref.manifest.num_classes]}
        ],
        "dynamic_batching": dynamic,
    }


@router.get("")
async def server_metadata() -> dict:
    return {
        "name": "imgcls",
        "version": imgcls.__version__,
        "extensions": ["binary_tensor_data", "classification"],
    }


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    is_ready = registry(request).ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def _worker(request: Request, name: str, version: str | None) -> ModelWorker:
    if version is not None and not (version.isascii() and version.isdigit()):
        raise BadInputError(f"version must be a positive integer, got {version!r}")
    return registry(request).get(name, int(version) if version is not None else None)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
    worker = _worker(request, name, version)
    return _metadata(worker, sorted(registry(request).workers[name]))


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    worker = _worker(request, name, version)
    return JSONResponse({"name": name, "ready": worker.ready}, status_code=200 if worker.ready else 503)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> dict:
    return _config(_worker(request, name, version))


def _select_input(
    parsed: InferRequest, worker: ModelWorker, max_images: int
) -> tuple[str, list[bytes] | np.ndarray]:
    by_name = {t.name: t for t in parsed.inputs}
    unknown = sorted(set(by_name) - {"image", "pixels"})
    if unknown or len(parsed.inputs) != 1:
        raise BadInputError(
            f"give exactly one input, 'image' (BYTES) or 'pixels' (FP32); got {[t.name for t in parsed.inputs]}"
        )
    tensor = parsed.inputs[0]
    if tensor.name == "image":
        if tensor.datatype != "BYTES" or not (
            len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)
        ):
            raise BadInputError(
                f"input 'image' must be BYTES of shape [N] (or [N, 1]), got {tensor.datatype} {tensor.shape}"
            )
        count = len(tensor.data)
    else:
        expected = [*worker.ref.manifest.input.shape]
        if tensor.datatype != "FP32" or len(tensor.shape) != 4 or tensor.shape[1:] != expected:
            raise BadInputError(
                f"input 'pixels' must be FP32 of shape [N, {', '.join(map(str, expected))}], got {tensor.datatype} {tensor.shape}"
            )
        count = tensor.shape[0]
    if count < 1:
        raise BadInputError("no images: the input holds zero elements")
    if count > max_images:
        raise BadInputError(
            f"{count} images in one request; the limit is {max_images} (max_images_per_request)"
        )
    return tensor.name, tensor.data


def _check_outputs(parsed: InferRequest) -> None:
    for request_output in parsed.outputs:
        if request_output.name != OUTPUT_NAME:
            raise BadInputError(f"unknown output {request_output.name!r}; this model has '{OUTPUT_NAME}'")


def _outputs(parsed: InferRequest, worker: ModelWorker, probabilities: np.ndarray) -> list[OutputTensor]:
    requested = parsed.outputs or [None]
    labels = worker.ref.manifest.labels
    outputs = []
    for request_output in requested:
        binary = (
            parsed.binary_output
            if request_output is None or request_output.binary is None
            else request_output.binary
        )
        k = request_output.classification if request_output is not None else None
        if k:
            k = min(k, len(labels))
            top = top_k_indices(probabilities, k)
            strings = [
                f"{probabilities[row, index]:.6f}:{index}:{labels[index]}".encode()
                for row in range(len(probabilities))
                for index in top[row]
            ]
            outputs.append(OutputTensor(OUTPUT_NAME, "BYTES", [len(probabilities), k], strings, binary))
        else:
            outputs.append(
                OutputTensor(OUTPUT_NAME, "FP32", list(probabilities.shape), probabilities, binary)
            )
    return outputs


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    arrived_at = asyncio.get_running_loop().time()  # the deadline covers reading the body too
    worker = _worker(request, name, version)
    request.state.model_labels = (worker.name, str(worker.version))
    worker.require_ready()  # answer 503 before reading a body we cannot use
    worker.admission.check_room()
    header = request.headers.get("inference-header-content-length")
    if header is not None and not (header.isascii() and header.isdigit()):
        raise BadInputError(f"Inference-Header-Content-Length must be an integer, got {header!r}")
    body = decompress(
        await request.body(),
        request.headers.get("content-encoding"),
        request.app.state.settings.max_body_bytes,
    )
    parsed = await parse_body(
        request,
        body,
        parse_infer_request,
        int(header) if header is not None else None,
        request.app.state.settings.max_json_depth,
    )
    input_name, data = _select_input(parsed, worker, request.app.state.settings.max_images_per_request)
    _check_outputs(parsed)  # before computing anything
    request.state.images = len(data)
    request.state.timings = timings = {}
    if input_name == "image":
        probabilities = await until_disconnect(
            request, worker.predict_images(list(data), parsed.timeout_s, timings, arrived_at)
        )
    else:
        probabilities = await until_disconnect(
            request,
            worker.predict_pixels(np.asarray(data, dtype=np.float32), parsed.timeout_s, timings, arrived_at),
        )
    content, headers = encode_infer_response(
        name, str(worker.version), parsed.id, _outputs(parsed, worker, probabilities)
    )
    return Response(
        content=content,
        headers={k: v for k, v in headers.items() if k != "content-type"},
        media_type=headers["content-type"],
    )
