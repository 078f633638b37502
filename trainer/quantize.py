"""Post-training INT8 quantisation with real calibration data.

Two routes, one per runtime:

- :func:`quantize_onnx_int8` writes a static INT8 ONNX model (QDQ format) for ONNX Runtime on
  CPUs, its activation ranges calibrated on images from the training split;
- :func:`calibrate_modelopt` inserts NVIDIA ModelOpt quantizers into the eager model and calibrates
  them, ready for Torch-TensorRT to compile into an INT8 (or FP8) engine (``trainer.tensorrt``).

Both take the calibration images already through the bundle's eval transform, so the ranges are
those of what the service will feed the model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
import torch
from torch import nn

from imgcls.errors import ExportError, describe_error

__all__ = ["calibrate_modelopt", "import_modelopt", "quantize_onnx_int8"]

log = logging.getLogger("imgcls.quantize")

CALIBRATION_BATCH_SIZE = 16


def _batches(images: torch.Tensor, size: int = CALIBRATION_BATCH_SIZE) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), size):
        yield images[start : start + size]


def quantize_onnx_int8(
    fp32_model: Path,
    out: Path,
    calibration_images: torch.Tensor,
    *,
    method: Literal["minmax", "entropy", "percentile"] = "minmax",
    per_channel: bool = True,
) -> str:
    """Quantise ``fp32_model`` statically to ``out``; returns the calibration method's description.

    QDQ format with per-channel INT8 weights and UINT8 activations, the layout ONNX Runtime's CPU
    kernels are fastest with. ``reduce_range`` keeps weights to 7 bits: on x86 CPUs without VNNI
    the u8 x s8 multiply-add saturates 16-bit sums, and the artifact must stay accurate on whatever
    CPU serves it, not just the one that exported it (the parity check runs here).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    arrays = [batch.numpy().astype(np.float32, copy=False) for batch in _batches(calibration_images)]

    class Reader(CalibrationDataReader):
        def __init__(self, input_name: str) -> None:
            self._feeds = iter([{input_name: array} for array in arrays])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    import onnx

    input_name = onnx.load(str(fp32_model), load_external_data=False).graph.input[0].name
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as scratch:
        # Shape inference and graph fusion first (Conv+BN, etc.), as ONNX Runtime's quantisation
        # guide recommends: quantising the unfused graph leaves Q/DQ pairs between fused ops.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader(input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
        )
    return f"onnxruntime {method}, {'per-channel' if per_channel else 'per-tensor'} weights"


def import_modelopt() -> ModuleType:
    """``modelopt.torch.quantization``, imported quietly; ImportError saying why when it cannot be."""
    # Its import warns about optional integrations (transformers, ...) and, through torch's C++
    # extension loader, logs that no CUDA runtime exists on CPU machines: noise for our users.
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except Exception as exc:
        raise ImportError(f"nvidia-modelopt does not import ({describe_error(exc)})") from None
    finally:
        extension_log.setLevel(level)
    return mtq


def calibrate_modelopt(
    model: nn.Module, calibration_images: torch.Tensor, *, precision: Literal["int8", "fp8"]
) -> nn.Module:
    """Insert ModelOpt quantizers into ``model`` (in place) and calibrate them on the images.

    Runs on whatever device ``model`` is on, CPU included. Torch-TensorRT turns the calibrated
    quantize/dequantize nodes into an INT8 (FP8) engine; no precision flag is involved.
    """
    try:
        mtq = import_modelopt()
    except ImportError as exc:
        raise ExportError(
            f"{exc}; INT8/FP8 TensorRT export calibrates with it: pip install nvidia-modelopt "
            "(imgcls's GPU image has it; `pip install -e '.[tensorrt]'` adds it with torch-tensorrt)"
        ) from None
    config = {"int8": mtq.INT8_DEFAULT_CFG, "fp8": mtq.FP8_DEFAULT_CFG}[precision]
    device = next(model.parameters()).device

    def forward_loop(quantized: nn.Module) -> None:
        with torch.no_grad():
            for batch in _batches(calibration_images):
                quantized(batch.to(device))

    printed = io.StringIO()
    # It prints "Inserted N quantizers" (ours is a log line) and lazily imports optional integrations
    # that warn when absent (transformers, ...).
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"modelopt\.")
        quantized = mtq.quantize(model, config, forward_loop=forward_loop)
    log.info("ModelOpt %s: %s", precision, printed.getvalue().strip() or "calibrated")
    from modelopt.torch.quantization.nn import TensorQuantizer

    enabled = [m for m in quantized.modules() if isinstance(m, TensorQuantizer) and m.is_enabled]
    uncalibrated = [m for m in enabled if m.amax is None]
    if not enabled or uncalibrated:
        raise ExportError(
            f"ModelOpt {precision} calibration: {len(enabled)} quantizer(s) enabled, {len(uncalibrated)} "
            "without ranges; the model needs Conv or Linear layers the calibration images reach"
        )
    return quantized
