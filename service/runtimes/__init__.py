"""Runtimes: one small interface, a batch of preprocessed images in, class probabilities out.

- ``base``: the :class:`Runtime` interface, ``softmax`` and ``warm_up``;
- ``onnxruntime``: ONNX Runtime, for the FP32 and INT8 ONNX artifacts;
- ``torchscript``: TorchScript and Torch-TensorRT engines, with the CUDA staging they share;
- ``choice``: which runtime serves a bundle on this device (``choose_runtime``).
"""

from service.runtimes.base import Runtime, sigmoid, softmax, warm_up
from service.runtimes.choice import build_runtime, candidates, choose_runtime, resolve_device
from service.runtimes.onnxruntime import OnnxRuntime
from service.runtimes.torchscript import TensorRTRuntime, TorchScriptRuntime

__all__ = [
    "OnnxRuntime",
    "Runtime",
    "TensorRTRuntime",
    "TorchScriptRuntime",
    "build_runtime",
    "candidates",
    "choose_runtime",
    "resolve_device",
    "sigmoid",
    "softmax",
    "warm_up",
]
