"""What every peer shares: find the bundle, build imgcls's own model and preprocessing, speak the contract.

The bundle is verified and loaded as ``imgcls serve`` loads it: ``imgcls.repository.load_bundle``
checks the manifest and every artifact's sha256, ``service.runtimes.choose_runtime`` picks the same
runtime with the same defaults (ONNX Runtime on the CPU; intra-op threads left to the runtime, i.e.
one per core, unless ``--intra-op-threads`` is given, exactly like ``IMGCLS_INTRA_OP_THREADS``), and
the batch sizes the server will see are warmed up. Images go through ``service.preprocess.Preprocessor``.
So the peers differ from imgcls, and from each other, only in how they serve.

The contract: ``POST /v1/models/{name}:predict`` with ``{"instances": [{"b64": "<image file>"}, ...]}``
answers ``{"predictions": [{"label": ..., "score": ...}, ...]}``, one per instance, in order; a body
that does not fit answers 400.
"""

from __future__ import annotations

import argparse
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from imgcls.errors import ImgclsError, describe_validation_errors
from imgcls.manifest import Manifest, load_manifest, verify_artifacts
from imgcls.repository import load_bundle, next_version
from service.errors import BadInputError
from service.preprocess import Preprocessor
from service.runtimes import Runtime, choose_runtime, warm_up
from service.settings import Settings
from service.v2_codec import decode_base64

__all__ = [
    "BadInputError",
    "Model",
    "PredictRequest",
    "answer_validation_errors_with_400",
    "load_model",
    "parse_args",
    "resolve_bundle",
]

log = logging.getLogger("imgcls.peers")

MAX_IMAGES_PER_REQUEST = Settings.model_fields["max_images_per_request"].default  # imgcls's own limit


class Instance(BaseModel):
    b64: str


class PredictRequest(BaseModel):
    """The body every peer accepts; FastAPI (and so LitServe and Ray's ingress) validates it."""

    instances: list[Instance] = Field(min_length=1, max_length=MAX_IMAGES_PER_REQUEST)


@dataclass
class Model:
    """One loaded bundle: its manifest, imgcls's preprocessing and runtime."""

    manifest: Manifest
    preprocessor: Preprocessor
    runtime: Runtime

    @property
    def name(self) -> str:
        return self.manifest.name

    def preprocess(self, encoded: str) -> np.ndarray:
        """One instance's base64 text -> float32 ``[C, H, W]``; :class:`BadInputError` if not an image."""
        try:
            data = decode_base64(encoded)  # imgcls's own: strict, but line breaks allowed
        except (binascii.Error, ValueError):
            raise BadInputError("b64 is not valid base64") from None
        return self.preprocessor(data)

    def preprocess_request(self, request: PredictRequest) -> np.ndarray:
        """Every instance of a request, stacked: ``[N, C, H, W]``; a bad image names its position."""
        arrays = []
        for index, instance in enumerate(request.instances):
            try:
                arrays.append(self.preprocess(instance.b64))
            except BadInputError as exc:
                raise BadInputError(f"instance {index}: {exc}") from None
        return np.stack(arrays)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``[N, C, H, W]`` -> softmax probabilities ``[N, classes]`` (the runtime applies the softmax)."""
        return self.runtime.infer(batch)

    def predictions(self, probabilities: np.ndarray) -> list[dict]:
        """Top-1 label and score per row."""
        labels = self.manifest.labels
        top = probabilities.argmax(axis=1)
        return [
            {"label": labels[i], "score": float(row[i])} for i, row in zip(top, probabilities, strict=True)
        ]


def resolve_bundle(model_repo: Path | None, model: str | None, bundle: Path | None) -> Path:
    """``--bundle DIR`` as given, or the highest numeric version folder under ``--model-repo``/``--model``."""
    if bundle is not None:
        return Path(bundle)
    if model_repo is None or model is None:
        raise ImgclsError("give --model-repo DIR --model NAME, or --bundle DIR/NAME/VERSION")
    folder = Path(model_repo) / model
    latest = next_version(folder) - 1
    if latest < 1:
        raise ImgclsError(f"{folder}: no version folders (1, 2, ...); export a bundle there first")
    return folder / str(latest)


def load_model(
    bundle_dir: Path, *, device: str = "auto", intra_op_threads: int | None = None, max_batch_size: int = 1
) -> Model:
    """Verify and load the bundle as ``imgcls serve`` does, then warm up batch sizes 1, 2, 4 ... max."""
    bundle_dir = Path(bundle_dir)
    if bundle_dir.name.isdigit():  # models/<name>/<version>: the same check imgcls makes
        manifest = load_bundle(bundle_dir, bundle_dir.parent.name, int(bundle_dir.name))
    else:
        manifest = load_manifest(bundle_dir)
        verify_artifacts(bundle_dir, manifest)
    runtime = choose_runtime(manifest, bundle_dir, device=device, intra_op_threads=intra_op_threads)
    warm_up(runtime, manifest.input.shape, max_batch_size)
    log.info("%s v%d on %s", manifest.name, manifest.version, runtime.describe())
    return Model(manifest, Preprocessor(manifest.preprocess), runtime)


def answer_validation_errors_with_400(app: FastAPI) -> None:
    """FastAPI answers a body that fails its model with 422; the contract (and imgcls) says 400."""

    async def handler(request: Request, exc: RequestValidationError) -> JSONResponse:
        problem = describe_validation_errors(exc.errors(), with_input=False, first_only=True)
        return JSONResponse({"error": problem}, status_code=400)

    app.add_exception_handler(RequestValidationError, handler)


def parse_args(
    description: str, argv: list[str] | None = None, *, batching: bool = False, workers: bool = False
) -> tuple[argparse.Namespace, Path]:
    """The command line every peer takes; returns the arguments and the resolved bundle folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model-repo", type=Path, help="model repository: DIR/NAME/VERSION/manifest.json")
    parser.add_argument("--model", help="model name under --model-repo; its highest version is served")
    parser.add_argument("--bundle", type=Path, help="one bundle folder, instead of --model-repo/--model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="as imgcls --device"
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=None,
        help="runtime threads per model copy (default: the runtime's own, one per core, as imgcls)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning")
    if batching:
        parser.add_argument("--max-batch-size", type=int, default=32, help="as imgcls's default (32)")
        parser.add_argument(
            "--max-queue-delay-ms",
            type=float,
            default=5.0,
            help="longest wait for a batch to fill (imgcls: 5)",
        )
    if workers:
        parser.add_argument("--workers", type=int, default=1, help="model copies (processes/replicas)")
    args = parser.parse_args(argv)
    if batching and args.max_batch_size < 1:
        parser.error("--max-batch-size must be at least 1")
    if workers and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        bundle_dir = resolve_bundle(args.model_repo, args.model, args.bundle)
    except ImgclsError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args, bundle_dir
