"""Runtimes: one small interface, a batch of preprocessed images in, class probabilities out.

``choose_runtime`` picks one from the device and the artifacts a bundle holds: on the CPU, ONNX
Runtime (the fastest there for these models), its INT8 model first when the bundle has one that
passed parity; on CUDA, Torch-TensorRT when an engine exists, was built for this GPU and TensorRT,
and ``torch_tensorrt`` imports, then TorchScript in FP16. A runtime that cannot run here says why,
and the next one is tried. Artifacts that failed parity (random-init speed bundles) are used only
when the runtime is pinned.

Runtimes are not thread-safe by contract: each model version calls its runtime from one
dedicated executor thread (see ``service.worker``).
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Container
from pathlib import Path
from typing import Literal

import numpy as np

from imgcls.errors import describe_error
from imgcls.manifest import Artifact, EngineInfo, Manifest
from service.errors import RuntimeUnavailableError
from service.settings import usable_cores

__all__ = [
    "OnnxRuntime",
    "Runtime",
    "TensorRTRuntime",
    "TorchScriptRuntime",
    "build_runtime",
    "choose_runtime",
    "load_every_artifact",
    "resolve_device",
    "runtime_label",
    "served_label",
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
    max_batch_size: int | None = None  # the largest batch it accepts (a TensorRT engine's max shape)
    accepts_device_tensors: bool = False  # infer_tensor takes a batch on its device without a host copy

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def infer_tensor(self, batch) -> np.ndarray:
        """The same for a float32 ``torch.Tensor`` already on this runtime's device (device
        preprocessing); runtimes that cannot take one get it copied to host memory."""
        return self.infer(batch.cpu().numpy())

    def close(self) -> None:  # noqa: B027 - most runtimes free everything on garbage collection
        """Release what the runtime holds (GPU memory, sessions)."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.device})"

    def choose_memory_format(self, batch: np.ndarray, mode: str) -> str | None:
        """Choose the input layout, timing the options on ``batch`` where ``mode`` is auto; returns
        a line for the log, or None when nothing changed (most runtimes have one layout)."""
        return None


# channels-last is kept only when it is at least this much faster: timing noise must not flip it.
CHANNELS_LAST_MIN_GAIN = 0.03


def prefer_channels_last(seconds_contiguous: float, seconds_channels_last: float) -> bool:
    return seconds_channels_last < seconds_contiguous * (1 - CHANNELS_LAST_MIN_GAIN)


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
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
        self.precision = precision  # int8: a QDQ model, still float32 in and out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        logits = self._session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return softmax(logits)


class _CudaStaging:
    """Pinned host buffers and a dedicated CUDA stream for one runtime (one inference thread).

    A batch is copied once into page-locked memory, sent with one asynchronous copy on the runtime's
    own stream (so copies and compute never queue behind other work on the default stream; TensorRT
    engines run on the caller's current stream), and the probabilities come back with one copy per
    batch. Buffers grow to the largest batch seen and are reused.
    """

    def __init__(self, torch) -> None:
        self._torch = torch
        self.stream = torch.cuda.Stream()
        self._inputs = None
        self._outputs = None

    def _pinned(self, buffer, shape: tuple[int, ...]):
        if buffer is None or buffer.shape[0] < shape[0] or buffer.shape[1:] != shape[1:]:
            return self._torch.empty(shape, dtype=self._torch.float32, pin_memory=True)
        return buffer

    def run(self, forward, batch: np.ndarray) -> np.ndarray:
        """``batch`` in host memory: one copy into the pinned buffer, one asynchronous copy up."""
        self._inputs = self._pinned(self._inputs, batch.shape)
        host_in = self._inputs[: len(batch)]
        host_in.copy_(self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        with self._torch.cuda.stream(self.stream):
            return self._probabilities(forward, host_in.to("cuda", non_blocking=True))

    def run_on_device(self, forward, batch) -> np.ndarray:
        """``batch`` already on the GPU (made on another stream, which has finished with it)."""
        batch.record_stream(self.stream)  # the allocator must not reuse it while this stream reads it
        with self._torch.cuda.stream(self.stream):
            return self._probabilities(forward, batch)

    def _probabilities(self, forward, device_batch) -> np.ndarray:
        """On this stream: forward, softmax, one copy back into pinned memory, one wait."""
        probabilities = self._torch.softmax(forward(device_batch).float(), dim=1)
        self._outputs = self._pinned(self._outputs, tuple(probabilities.shape))
        host_out = self._outputs[: len(device_batch)]
        host_out.copy_(probabilities, non_blocking=True)
        self.stream.synchronize()  # the pinned buffers are free again after it
        return host_out.numpy().copy()


class TorchScriptRuntime(Runtime):
    name = "torchscript"
    accepts_device_tensors = True

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        half: bool = False,
        intra_op_threads: int | None = None,
        half_input: bool = False,
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
        # The artifact is frozen: its weights are graph constants that Module.half() cannot reach, so
        # FP16 runs under autocast, which casts at each operator (convolutions and matmuls in half).
        self._autocast = half and device == "cuda"
        self._half_input = half_input and device == "cuda"  # a TensorRT FP16 engine takes half input
        self._module = module.eval()
        self._torch = torch
        self._staging = _CudaStaging(torch) if device == "cuda" else None
        self._channels_last = False  # choose_memory_format decides, at warm-up
        self.device = device
        self.precision = "fp16" if self._autocast or self._half_input else "fp32"

    def _forward(self, inputs):
        torch = self._torch
        if self._channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self._half_input:
            inputs = inputs.half()
        if self._autocast:
            with torch.autocast("cuda", dtype=torch.float16):
                return self._module(inputs)
        return self._module(inputs)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if self._staging is not None:
                return self._staging.run(self._forward, batch)
            logits = self._forward(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            return torch.softmax(logits.float(), dim=1).numpy()

    def infer_tensor(self, batch) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if self._staging is not None:
                return self._staging.run_on_device(self._forward, batch)
            return torch.softmax(self._forward(batch).float(), dim=1).numpy()

    def choose_memory_format(self, batch: np.ndarray, mode: str) -> str | None:
        """channels-last input lets cuDNN pick its NHWC kernels, usually faster for FP16 convolutions
        on tensor cores, but not for every model and GPU: auto measures (CUDA only; on CPU ONNX
        Runtime is the runtime of choice and the measurement would cost seconds)."""
        if mode == "off" or (mode == "auto" and self.device != "cuda"):
            return None
        if mode == "on":
            self._channels_last = True
            return "channels-last input (channels_last=on)"
        seconds = {}
        for channels_last in (False, True):
            self._channels_last = channels_last
            try:
                seconds[channels_last] = self._seconds_per_batch(batch)
            except Exception as exc:  # an operator without a channels-last kernel
                self._channels_last = False
                return f"contiguous input: channels-last failed ({describe_error(exc)})"
        self._channels_last = prefer_channels_last(seconds[False], seconds[True])
        return (
            f"{'channels-last' if self._channels_last else 'contiguous'} input: {1e3 * seconds[True]:.2f} ms "
            f"channels-last against {1e3 * seconds[False]:.2f} ms contiguous at batch {len(batch)}"
        )

    def _seconds_per_batch(self, batch: np.ndarray, repeats: int = 5) -> float:
        self.infer(batch)  # the layout's kernels are chosen (cuDNN benchmark) on the first call
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.infer(batch)  # returns after the copy back: the GPU has finished
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def close(self) -> None:
        del self._module
        self._staging = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


class TensorRTRuntime(TorchScriptRuntime):
    """A Torch-TensorRT engine saved as TorchScript; needs ``torch_tensorrt`` and CUDA.

    The engine is refused, before it is deserialised, when the manifest says it was built for
    another GPU architecture, TensorRT version or Torch-TensorRT ABI (``imgcls.engine_platform``).
    """

    name = "tensorrt"

    def __init__(self, path: Path, *, precision: str, engine: EngineInfo | None) -> None:
        import torch

        from imgcls import engine_platform

        if not torch.cuda.is_available():
            raise RuntimeUnavailableError("TensorRT engines need a CUDA GPU and none is available")
        if engine is None:
            raise RuntimeUnavailableError("the manifest records no engine build info; re-export the engine")
        # platform_info imports torch_tensorrt, which registers the engine class TorchScript needs.
        try:
            here = engine_platform.platform_info()
        except ImportError as exc:
            raise RuntimeUnavailableError(
                f"{exc}; install it where TensorRT is available (an NGC PyTorch image) to use TensorRT artifacts"
            ) from None
        except Exception as exc:  # a torch_tensorrt without its C++ runtime, a CUDA error...
            raise RuntimeUnavailableError(
                f"cannot read the TensorRT platform: {describe_error(exc)}"
            ) from None
        mismatch = engine_platform.engine_mismatch(engine, here)
        if mismatch:
            raise RuntimeUnavailableError(
                f"engine {path.name} {mismatch}; rebuild it here with imgcls export"
            )
        try:
            super().__init__(path, device="cuda", half_input=precision == "fp16")
        except Exception as exc:  # a corrupt or foreign engine: the next runtime serves instead
            raise RuntimeUnavailableError(
                f"engine {path.name} does not load: {describe_error(exc)}"
            ) from None
        self.precision = precision
        self.max_batch_size = engine.max_batch_size

    def choose_memory_format(self, batch: np.ndarray, mode: str) -> str | None:
        return None  # the engine's input layout was fixed when it was built


def warm_up(
    runtime: Runtime, image_shape: tuple[int, int, int], max_batch_size: int, channels_last: str = "auto"
) -> str | None:
    """Run batch sizes 1, 2, 4, ... ``max_batch_size`` once, so the first requests pay no compile or
    allocation cost, then choose the input layout at ``max_batch_size`` (the batches formed under
    load); returns the layout line for the log. A failure closes the runtime (no half-warmed GPU
    memory left behind)."""
    from service.batcher import doubling_batch_sizes

    try:
        for size in doubling_batch_sizes(max_batch_size):
            runtime.infer(np.zeros((size, *image_shape), dtype=np.float32))
        choose = getattr(runtime, "choose_memory_format", None)  # duck-typed runtimes may lack it
        return (
            choose(np.zeros((max_batch_size, *image_shape), dtype=np.float32), channels_last)
            if choose
            else None
        )
    except BaseException:
        runtime.close()
        raise


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_PRECISION_ORDER = ("int8", "fp8", "fp16", "bf16", "fp32")  # fastest first


def _ranked(artifacts: list[Artifact]) -> list[Artifact]:
    """Those that passed parity first, then the faster precision first."""
    return sorted(artifacts, key=lambda a: (not a.parity.passed, _PRECISION_ORDER.index(a.precision)))


def _candidates(
    manifest: Manifest, device: str, preference: RuntimeName | Literal["auto", "onnxruntime-int8"]
) -> list[tuple[RuntimeName, Artifact | None]]:
    """(runtime, artifact) pairs in the order to try; artifact None: the bundle has none for it.

    Automatic choice uses only artifacts that passed parity; a pinned runtime falls back to one that
    failed (random-init speed bundles), after any that passed.
    """
    onnx = manifest.artifact("onnx", "fp32")
    torchscript = manifest.artifact("torchscript", "fp32")
    engines = _ranked([a for a in manifest.artifacts if a.format == "torchscript_tensorrt"])
    onnx_int8 = _ranked([a for a in manifest.artifacts if a.format == "onnx" and a.precision == "int8"])
    if preference == "auto":
        if device == "cuda":
            passed = [a for a in engines if a.parity.passed]
            return [
                *(("tensorrt", a) for a in passed or [None]),
                ("torchscript", torchscript),
                ("onnxruntime", onnx),
            ]
        passed = [a for a in onnx_int8 if a.parity.passed]
        return [*(("onnxruntime", a) for a in passed), ("onnxruntime", onnx), ("torchscript", torchscript)]
    if preference == "tensorrt":
        return [("tensorrt", a) for a in engines or [None]]
    if preference == "onnxruntime-int8":
        return [("onnxruntime", a) for a in onnx_int8 or [None]]
    if preference == "onnxruntime":
        return [("onnxruntime", onnx)]
    return [("torchscript", torchscript)]


def served_label(manifest: Manifest, device: str, loaded: Container[str]) -> str | None:
    """The :func:`runtime_label` of what :func:`choose_runtime` (automatic) would serve, given the
    labels of the runtimes that load here (:func:`load_every_artifact`); None if none would."""
    for name, artifact in _candidates(manifest, device, "auto"):
        if artifact is not None and runtime_label(name, artifact.precision) in loaded:
            return runtime_label(name, artifact.precision)
    return None


def build_runtime(
    name: RuntimeName, artifact: Artifact, bundle_dir: Path, device: str, threads: int | None
) -> Runtime:
    """Load ``artifact`` with the runtime ``name``, configured as the service serves it."""
    path = Path(bundle_dir) / artifact.path
    if name == "onnxruntime":
        return OnnxRuntime(path, device=device, intra_op_threads=threads, precision=artifact.precision)
    if name == "torchscript":
        return TorchScriptRuntime(path, device=device, half=device == "cuda", intra_op_threads=threads)
    return TensorRTRuntime(path, precision=artifact.precision, engine=artifact.engine)


RUNTIME_OF_FORMAT: dict[str, RuntimeName] = {
    "torchscript": "torchscript",
    "onnx": "onnxruntime",
    "torchscript_tensorrt": "tensorrt",
}


def runtime_label(name: str, precision: str) -> str:
    """One label per artifact: onnxruntime and onnxruntime-int8, tensorrt-fp16 and tensorrt-int8; the
    runtime's own precision otherwise (TorchScript serves FP16 on CUDA from the FP32 artifact)."""
    return name if name != "tensorrt" and precision in ("fp32", "fp16") else f"{name}-{precision}"


def load_every_artifact(
    manifest: Manifest, bundle_dir: Path, *, device: str, intra_op_threads: int | None = None
) -> tuple[dict[str, Runtime], dict[str, str]]:
    """Each of the bundle's artifacts loaded as the service would serve it on ``device``, by
    :func:`runtime_label`, and why each of the others did not load (a missing library, an engine
    built for another GPU)."""
    loaded: dict[str, Runtime] = {}
    failed: dict[str, str] = {}
    for artifact in manifest.artifacts:
        name = RUNTIME_OF_FORMAT[artifact.format]
        label = runtime_label(name, artifact.precision)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                loaded[label] = build_runtime(name, artifact, bundle_dir, device, intra_op_threads)
        except RuntimeUnavailableError as exc:
            failed[label] = str(exc)
        except Exception as exc:  # a provider that fails to create a session, a corrupt file
            failed[label] = describe_error(exc)
    return loaded, failed


def choose_runtime(
    manifest: Manifest,
    bundle_dir: Path,
    *,
    preference: RuntimeName | Literal["auto", "onnxruntime-int8"] = "auto",
    device: str = "auto",
    intra_op_threads: int | None = None,
) -> Runtime:
    """The runtime to serve this bundle with; raises :class:`RuntimeUnavailableError` listing why none fits."""
    device = resolve_device(device)
    reasons: list[str] = []
    for name, artifact in _candidates(manifest, device, preference):
        if artifact is None:
            usable = " that passed parity" if preference == "auto" else ""
            reasons.append(f"{name}: the bundle has no artifact for it{usable}")
            continue
        if not artifact.parity.passed:
            log.warning(
                "%s v%d: serving %s, which failed its parity check (pinned runtime %s)",
                manifest.name,
                manifest.version,
                artifact.path,
                name,
            )
        try:
            runtime = build_runtime(name, artifact, bundle_dir, device, intra_op_threads)
        except RuntimeUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
            log.warning(
                "%s v%d: %s (%s) unavailable, trying the next runtime: %s",
                manifest.name,
                manifest.version,
                name,
                artifact.path,
                exc,
            )
            continue
        return runtime
    raise RuntimeUnavailableError(
        f"no runtime can serve {manifest.name} v{manifest.version} on {device}: " + "; ".join(reasons)
    )
