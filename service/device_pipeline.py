"""The device-decode pipeline of one model version: JPEG batches decoded and preprocessed on the
runtime's device, on a thread of its own, for the worker to infer.

``service.device_preprocess`` says what happens to a batch (nvJPEG decode, the eval transform, CPU
fallbacks); this module is how a worker uses it:

- :func:`open_device_pipeline` decides at load whether the version gets one (the
  ``device_preprocessing`` setting and the runtime) and pays the decoder's start-up before the version
  reports ready.
- :meth:`DevicePipeline.route` runs on the shared decode pool: it checks each image's header and
  leaves JPEGs encoded.
- :meth:`DevicePipeline.stage` runs a batch on the pipeline's own thread (and CUDA stream), so the
  worker can hand this batch's inference to the inference thread and let the batcher stage the next
  batch meanwhile (``service.batcher``, the two-stage runner).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from imgcls.errors import describe_error
from service.device_preprocess import DevicePreprocessor, EncodedJpeg
from service.errors import BadInputError
from service.preprocess import Preprocessor

if TYPE_CHECKING:
    from service.runtimes import Runtime

__all__ = ["DevicePipeline", "StagedBatch", "open_device_pipeline"]

log = logging.getLogger("imgcls.worker")  # the worker's log: these lines are about a model version

DevicePreprocessing = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class StagedBatch:
    """A batch on the device, ready to infer."""

    tensor: torch.Tensor  # float32 [N, C, H, W] on the device; a failed item's row is zeros
    errors: list[BadInputError | None]  # per item, the error that kept it out of the batch, or None

    @property
    def rows(self) -> np.ndarray:
        """True for each row that holds an image; the others are placeholders, never answered."""
        return np.array([error is None for error in self.errors])

    def answers(self, probabilities: np.ndarray) -> list[np.ndarray | BadInputError]:
        """Per item, its row of ``probabilities``, or the error its caller gets instead (400)."""
        return [
            row if error is None else error for row, error in zip(probabilities, self.errors, strict=True)
        ]


class DevicePipeline:
    """``route`` on the decode pool, ``stage`` on this pipeline's thread; ``close`` at shutdown."""

    def __init__(
        self,
        preprocessor: DevicePreprocessor,
        *,
        name: str,
        version: int,
        on_staged: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._preprocessor = preprocessor
        self._label = f"{name} v{version}"
        self._on_staged = on_staged  # seconds per batch, from the pipeline's thread (metrics)
        # One thread: batches are staged one at a time, on the preprocessor's stream.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"preprocess-{name}-{version}")
        self._fallback_logged = False

    @property
    def device(self) -> torch.device:
        return self._preprocessor.device

    def route(self, data: bytes, index: int) -> EncodedJpeg | np.ndarray:
        """A JPEG stays encoded for the device; anything else is decoded here (on a decode thread)."""
        return self._preprocessor.route(data, index)

    async def stage(self, items: Sequence[EncodedJpeg | np.ndarray]) -> StagedBatch:
        """Decode and preprocess a batch of routed items on the device, on this pipeline's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._stage, items)

    def _stage(self, items: Sequence[EncodedJpeg | np.ndarray]) -> StagedBatch:
        started = time.perf_counter()
        fallbacks = self._preprocessor.fallbacks
        tensor, errors = self._preprocessor(list(items))
        self._on_staged(time.perf_counter() - started)
        if self._preprocessor.fallbacks > fallbacks and not self._fallback_logged:
            self._fallback_logged = True  # once: a client sending such files must not flood the log
            log.warning(
                "%s: the device JPEG decoder refused some images; they were decoded on the CPU", self._label
            )
        return StagedBatch(tensor, errors)

    async def close(self) -> None:
        """Wait for the batch being staged, if any, and stop the thread."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)


def open_device_pipeline(
    mode: DevicePreprocessing,
    runtime: Runtime,
    cpu: Preprocessor,
    *,
    name: str,
    version: int,
    on_staged: Callable[[float], None] = lambda seconds: None,
) -> DevicePipeline | None:
    """A warmed-up :class:`DevicePipeline` when ``mode`` and the runtime call for one; None otherwise.

    ``auto``: on CUDA, for runtimes that take device tensors (TorchScript, TensorRT); a device decoder
    that fails its warm-up is logged and left off. ``on``: always (on the CPU device too, which the
    tests use), and a failure is raised, so the load fails. Runs on the version's loading thread.
    """
    takes_tensors = getattr(runtime, "accepts_device_tensors", False)  # runtimes are duck-typed (test fakes)
    if mode == "off" or (mode == "auto" and not (runtime.device == "cuda" and takes_tensors)):
        return None
    preprocessor = DevicePreprocessor(cpu, runtime.device)
    try:
        preprocessor.warm_up()  # the decoder's start-up (nvJPEG) is paid here, not by the first request
    except Exception as exc:
        if mode == "on":
            raise
        log.warning(
            "%s v%d: JPEG decoding on %s failed its warm-up (%s); decoding on the CPU instead",
            name,
            version,
            runtime.device,
            describe_error(exc),
        )
        return None
    return DevicePipeline(preprocessor, name=name, version=version, on_staged=on_staged)
