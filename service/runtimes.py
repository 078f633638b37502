"""Runtimes: one small interface, a batch of preprocessed images in, class probabilities out.

``choose_runtime`` picks one from the device and the artifacts a bundle holds: ONNX Runtime on
the CPU (the fastest there for these models), TorchScript in FP16 on CUDA, Torch-TensorRT when its
artifact exists and ``torch_tensorrt`` imports. A runtime that cannot run here says why, and the
next one is tried.

Runtimes are not thread-safe by contract: each model version calls its runtime from one
dedicated executor thread (see ``service.worker``).
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np

from service.errors import RuntimeUnavailableError
from service.settings import usable_cores
from trainer.manifest import Artifact, Manifest

__all__ = [
    "OnnxRuntime",
    "Runtime",
    "TensorRTRuntime",
    "TorchScriptRuntime",
    "build_runtime",
    "choose_runtime",
    "resolve_device",
    "softmax",
    "warm_up",
]

log = logging.getLogger("imgcls.runtimes")

RuntimeName = Literal["onnxruntime", "torchscript", "tensorrt"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


class Runtime(ABC):
    """``infer(float32 [N, C, H, W]) -> float32 [N, classes]`` probabilities."""

    name: RuntimeName
    device: str
    precision: str

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 - most runtimes free everything on garbage collection
        """Release what the runtime holds (GPU memory, sessions)."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.device})"


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: Path, *, device: str = "cpu", intra_op_threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1  # one batch at a time per model: parallelism is inside each op
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailableError(
                    "onnxruntime has no CUDA execution provider here (install onnxruntime-gpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.device = device
        self.precision = "fp32"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        logits = self._session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return softmax(logits)


class TorchScriptRuntime(Runtime):
    name = "torchscript"

    def __init__(
        self, path: Path, *, device: str = "cpu", half: bool = False, intra_op_threads: int | None = None
    ) -> None:
        import torch

        if device == "cpu":
            # Called on the inference thread, which is the thread that runs the model. Explicit, because
            # the decode threads set 1 for themselves and threads started later inherit that.
            torch.set_num_threads(intra_op_threads or usable_cores())
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeUnavailableError("no CUDA device for TorchScript on cuda")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; pinned <2.15
            module = torch.jit.load(str(path), map_location=device)
        self._half = half and device == "cuda"
        if self._half:
            module = module.half()
        self._module = module.eval()
        self._torch = torch
        self.device = device
        self.precision = "fp16" if self._half else "fp32"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            inputs = inputs.to(self.device, non_blocking=True)
            if self._half:
                inputs = inputs.half()
            logits = self._module(inputs)
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def close(self) -> None:
        del self._module
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


class TensorRTRuntime(TorchScriptRuntime):
    """A Torch-TensorRT engine saved as TorchScript; needs ``torch_tensorrt`` and CUDA."""

    name = "tensorrt"

    def __init__(self, path: Path, *, precision: str) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeUnavailableError("TensorRT engines need a CUDA GPU and none is available")
        try:
            import torch_tensorrt  # noqa: F401  (registers the engine class TorchScript needs)
        except ImportError as exc:
            raise RuntimeUnavailableError(
                f"torch_tensorrt does not import ({exc}); install it where TensorRT is available "
                "(an NGC PyTorch image) to use TensorRT artifacts"
            ) from None
        super().__init__(path, device="cuda", half=precision == "fp16")
        self.precision = precision


def warm_up(runtime: Runtime, image_shape: tuple[int, int, int], max_batch_size: int) -> None:
    """Run batch sizes 1, 2, 4, ... ``max_batch_size`` once, so the first requests pay no compile or
    allocation cost; a failure closes the runtime (no half-warmed GPU memory left behind)."""
    from service.batcher import doubling_batch_sizes

    try:
        for size in doubling_batch_sizes(max_batch_size):
            runtime.infer(np.zeros((size, *image_shape), dtype=np.float32))
    except BaseException:
        runtime.close()
        raise


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _candidates(manifest: Manifest, device: str) -> list[tuple[RuntimeName, Artifact | None]]:
    tensorrt = manifest.artifact("torchscript_tensorrt")
    onnx = manifest.artifact("onnx")
    torchscript = manifest.artifact("torchscript")
    if device == "cuda":
        return [("tensorrt", tensorrt), ("torchscript", torchscript), ("onnxruntime", onnx)]
    return [("onnxruntime", onnx), ("torchscript", torchscript)]


def build_runtime(
    name: RuntimeName, artifact: Artifact, bundle_dir: Path, device: str, threads: int | None
) -> Runtime:
    """Load ``artifact`` with the runtime ``name``, configured as the service serves it."""
    path = Path(bundle_dir) / artifact.path
    if name == "onnxruntime":
        return OnnxRuntime(path, device=device, intra_op_threads=threads)
    if name == "torchscript":
        return TorchScriptRuntime(path, device=device, half=device == "cuda", intra_op_threads=threads)
    return TensorRTRuntime(path, precision=artifact.precision)


def choose_runtime(
    manifest: Manifest,
    bundle_dir: Path,
    *,
    preference: RuntimeName | Literal["auto"] = "auto",
    device: str = "auto",
    intra_op_threads: int | None = None,
) -> Runtime:
    """The runtime to serve this bundle with; raises :class:`RuntimeUnavailableError` listing why none fits."""
    device = resolve_device(device)
    candidates = _candidates(manifest, device)
    if preference != "auto":
        candidates = [c for c in candidates if c[0] == preference] or [(preference, None)]
    reasons: list[str] = []
    for name, artifact in candidates:
        if artifact is None:
            reasons.append(f"{name}: the bundle has no artifact for it")
            continue
        try:
            runtime = build_runtime(name, artifact, bundle_dir, device, intra_op_threads)
        except RuntimeUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
            log.info(
                "%s v%d: %s unavailable, trying the next runtime: %s",
                manifest.name,
                manifest.version,
                name,
                exc,
            )
            continue
        return runtime
    raise RuntimeUnavailableError(
        f"no runtime can serve {manifest.name} v{manifest.version} on {device}: " + "; ".join(reasons)
    )
