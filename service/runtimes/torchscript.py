"""TorchScript and Torch-TensorRT: the TorchScript artifact (FP16 under autocast on CUDA) and the
TensorRT engines saved as TorchScript, which run the same way on the GPU.

On CUDA both stage batches through pinned host memory on a stream of their own (:class:`_CudaStaging`).
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from imgcls.errors import describe_error
from imgcls.manifest import EngineInfo
from service.errors import RuntimeUnavailableError
from service.runtimes.base import Runtime
from service.settings import usable_cores

__all__ = ["CHANNELS_LAST_MIN_GAIN", "TensorRTRuntime", "TorchScriptRuntime", "prefer_channels_last"]

# channels-last is kept only when it is at least this much faster: timing noise must not flip it.
CHANNELS_LAST_MIN_GAIN = 0.03


def prefer_channels_last(seconds_contiguous: float, seconds_channels_last: float) -> bool:
    return seconds_channels_last < seconds_contiguous * (1 - CHANNELS_LAST_MIN_GAIN)


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
        """On this stream: forward (to scores), one copy back into pinned memory, one wait."""
        probabilities = forward(device_batch)
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
                logits = self._module(inputs)
        else:
            logits = self._module(inputs)
        # every path (host, pinned staging, device tensors) returns these scores
        if self.multilabel:
            return torch.sigmoid(logits.float())
        return torch.softmax(
            logits.float() if self.temperature == 1.0 else logits.float() / self.temperature, dim=1
        )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if self._staging is not None:
                return self._staging.run(self._forward, batch)
            return self._forward(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    def infer_tensor(self, batch) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if self._staging is not None:
                return self._staging.run_on_device(self._forward, batch)
            return self._forward(batch).numpy()

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
