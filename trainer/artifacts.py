"""Artifact formats: for each, write it from the eager model, load it back from disk with nothing but
its own runtime, and return its logits for the parity images (``trainer.export`` compares them).

- ``torchscript``: traced and frozen, FP32;
- ``onnx``: the dynamo exporter with a dynamic batch axis, FP32;
- ``onnx-int8``: the FP32 ONNX model quantised statically for ONNX Runtime on CPUs
  (``trainer.quantize``), calibrated on training images;
- ``tensorrt``: a Torch-TensorRT engine in FP16, INT8 or FP8 (``trainer.tensorrt``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from imgcls.errors import ExportError, describe_error
from imgcls.formats import EXPORT_FORMATS, FORMAT_NAMES, format_named
from imgcls.manifest import Calibration, EngineInfo
from trainer.config import RunConfig, TensorRTPrecision
from trainer.quantize import quantize_onnx_int8
from trainer.transforms import preprocess_spec

__all__ = [
    "ARTIFACT_FILES",
    "FORMATS",
    "REDUCED_PRECISION_FORMATS",
    "BuiltArtifact",
    "ExportImages",
    "artifact_file",
    "artifact_plan",
    "build_artifact",
    "in_chunks",
    "needs_calibration",
]

# The formats written in one precision, by name -> their file in the bundle (imgcls.formats' table).
ARTIFACT_FILES = {f.name: f.file_for() for f in EXPORT_FORMATS if len(f.precisions) == 1}


@dataclass(frozen=True)
class ExportImages:
    """The images every artifact is checked on, and the ones INT8 ranges are calibrated on.

    All have been through the bundle's eval transform. ``labels`` are class indices, or None for
    the seeded noise a random-init bundle is checked on.
    """

    parity: torch.Tensor
    labels: np.ndarray | None
    calibration: torch.Tensor | None = None
    calibration_source: Literal["train", "random"] = "train"


def in_chunks(run: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor, size: int = 64) -> np.ndarray:
    """``run`` over ``images`` a chunk at a time (memory stays bounded at 224 px and 512 images).

    The first chunk is one image, so every artifact is also run at a second batch size: proof that
    the batch axis stayed dynamic.
    """
    chunks = [images[:1], *torch.split(images[1:], size)] if len(images) > 1 else [images]
    return np.concatenate([run(chunk) for chunk in chunks])


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; we pin <2.15
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced)
        torch.jit.save(frozen, str(path))


def _run_torchscript(path: Path, batch: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return in_chunks(lambda chunk: loaded(chunk).float().numpy(), batch)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=({0: batch},),
        input_names=["input"],
        output_names=["logits"],
        external_data=False,
        verbose=False,
    )
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _run_onnx(path: Path, batch: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return in_chunks(lambda chunk: session.run(None, {name: chunk.numpy()})[0].astype(np.float32), batch)


_EXPORTERS = {
    "torchscript": (_export_torchscript, _run_torchscript),
    "onnx": (_export_onnx, _run_onnx),
}
FORMATS: tuple[str, ...] = FORMAT_NAMES  # the config accepts exactly these
# checked against the eager model on top-1 agreement, not numerically
REDUCED_PRECISION_FORMATS = frozenset(f.name for f in EXPORT_FORMATS if f.reduced_precision)


def needs_calibration(formats: tuple[str, ...], config: RunConfig) -> bool:
    """Whether any format needs INT8/FP8 calibration images."""
    quantised_engine = any(p != "fp16" for p in config.export.tensorrt_precisions)
    return "onnx-int8" in formats or ("tensorrt" in formats and quantised_engine)


def artifact_plan(formats: tuple[str, ...], config: RunConfig) -> list[tuple[str, TensorRTPrecision | None]]:
    """(format, TensorRT precision or None) for each artifact to write, in the order to write them.

    FP32 formats come first: the INT8 ONNX model is quantised from the FP32 one when the bundle
    has it. ``tensorrt`` gives one engine per precision in ``export.tensorrt_precisions``.
    """
    plan: list[tuple[str, TensorRTPrecision | None]] = []
    for fmt in sorted(formats, key=lambda f: f in REDUCED_PRECISION_FORMATS):
        if fmt == "tensorrt":
            plan.extend((fmt, precision) for precision in config.export.tensorrt_precisions)
        else:
            plan.append((fmt, None))
    return plan


def artifact_file(fmt: str, precision: TensorRTPrecision | None = None) -> str:
    """The bundle file of format ``fmt`` (a ``tensorrt`` engine needs its ``precision``)."""
    return format_named(fmt).file_for(precision)


def _write_artifact(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, config: RunConfig) -> None:
    write, _ = _EXPORTERS[fmt]
    try:
        if fmt == "onnx":
            write(model, example, path, config.export.onnx_opset)
        else:
            write(model, example, path)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{fmt} export of {config.model.name} failed: {describe_error(exc)}") from exc


def _load_back(fmt: str, path: Path, images: torch.Tensor, config: RunConfig) -> np.ndarray:
    try:
        return _EXPORTERS[fmt][1](path, images)
    except Exception as exc:
        raise ExportError(
            f"the {fmt} artifact of {config.model.name} does not load back: {describe_error(exc)}"
        ) from exc


@dataclass(frozen=True)
class BuiltArtifact:
    """An artifact on disk, its logits for the first ``len(logits)`` parity images, and how it was made."""

    precision: str
    device: str
    logits: np.ndarray
    calibration: Calibration | None = None
    engine: EngineInfo | None = None
    opset: int | None = None  # ONNX formats


def _calibration(images: ExportImages, fmt: str) -> torch.Tensor:
    if images.calibration is None:  # needs_calibration() decides what is gathered; this is a bug guard
        raise ExportError(f"{fmt} needs calibration images and none were gathered")
    return images.calibration


def build_artifact(
    fmt: str,
    model: nn.Module,
    images: ExportImages,
    path: Path,
    config: RunConfig,
    precision: TensorRTPrecision | None = None,
) -> BuiltArtifact:
    """Write ``fmt`` (a ``tensorrt`` engine in ``precision``) to ``path`` and run it back on the
    parity images."""
    export_cfg = config.export
    # torch.export specialises a dimension of size 1, so the example batch must hold at least 2 images.
    example = images.parity[:2].clone() if len(images.parity) >= 2 else images.parity.repeat(2, 1, 1, 1)
    if fmt in _EXPORTERS:
        _write_artifact(fmt, model, example, path, config)
        logits = _load_back(fmt, path, images.parity[: export_cfg.parity_samples], config)
        return BuiltArtifact("fp32", "cpu", logits, opset=_onnx_opset(path) if fmt == "onnx" else None)
    if fmt == "onnx-int8":
        fp32 = path.with_name(ARTIFACT_FILES["onnx"])
        if not fp32.is_file():  # the bundle holds no FP32 ONNX: quantise a temporary one
            fp32 = path.with_name(".fp32-for-int8.onnx")
            _write_artifact("onnx", model, example, fp32, config)
        try:
            method = quantize_onnx_int8(
                fp32,
                path,
                _calibration(images, fmt),
                method=export_cfg.onnx_int8_calibration,
                per_channel=export_cfg.onnx_int8_per_channel,
            )
        except Exception as exc:
            raise ExportError(
                f"INT8 quantisation of {config.model.name} failed: {describe_error(exc)}; try "
                "export.onnx_int8_per_channel=false or another export.onnx_int8_calibration, or serve the "
                "FP32 ONNX model"
            ) from exc
        finally:
            path.with_name(".fp32-for-int8.onnx").unlink(missing_ok=True)
        calibration = Calibration(
            images=len(_calibration(images, fmt)), source=images.calibration_source, method=method
        )
        logits = _load_back("onnx", path, images.parity, config)
        return BuiltArtifact("int8", "cpu", logits, calibration, opset=_onnx_opset(path))
    from trainer.tensorrt import build_engine, run_engine

    if precision is None:
        raise ExportError("a TensorRT artifact needs a precision (export.tensorrt_precisions)")
    spec = preprocess_spec(config.preprocess)
    try:
        engine = build_engine(
            model,
            path,
            precision=precision,
            image_shape=(spec.channels, spec.crop_height, spec.crop_width),
            batch_range=export_cfg.tensorrt_batch_range,
            example_images=images.parity,
            calibration_images=None if precision == "fp16" else _calibration(images, fmt),
            hardware_compatible=export_cfg.tensorrt_hardware_compatible,
        )
        logits = run_engine(path, images.parity, engine, precision)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"TensorRT {precision} export of {config.model.name} failed: {describe_error(exc)}; export "
            "torchscript/onnx for this model (the service serves TorchScript in FP16 on CUDA), or try "
            "another --precision"
        ) from exc
    calibration = None
    if precision != "fp16":
        count = len(_calibration(images, fmt))
        calibration = Calibration(
            images=count, source=images.calibration_source, method=f"modelopt {precision}_default"
        )
    return BuiltArtifact(precision, "cuda", logits, calibration, engine)


def _onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
