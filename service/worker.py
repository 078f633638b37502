"""One served model version: load its bundle, admit requests, decode on the pool, batch, run, answer.

Inference runs on a single-thread executor per version, so the event loop never blocks on
compute and the runtime is never called from two threads. Decoding runs on the shared decode
pool. With device preprocessing (``service.device_pipeline``, JPEG batches decoded on the GPU) the
decode pool only checks headers, and the worker runs each batch in two stages for the batcher:
staged on the device, then inferred while the next batch is staged. Warm-up runs every batch size
up to ``max_batch_size`` (powers of two and the maximum) before the version reports ready.

A prediction is admitted (``service.admission``: 503 when the version already holds
``max_queue_size`` unanswered images) and its deadline starts; both then cover the whole wait, for a
decode thread, decoding, queued and computing, until the request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from imgcls.errors import ImgclsError, describe_error
from imgcls.repository import BundleRef
from service.admission import Admission
from service.batcher import BatchStats, DynamicBatcher
from service.device_pipeline import DevicePipeline, StagedBatch, open_device_pipeline
from service.device_preprocess import EncodedJpeg
from service.errors import BadInputError, DeadlineExceededError, InferenceFailedError, ModelNotReadyError
from service.explaining import Explanations
from service.preprocess import Preprocessor
from service.runtimes import Runtime, choose_runtime, warm_up
from service.settings import ExplainSettings, ModelSettings

__all__ = ["ModelWorker", "NonFiniteOutputError"]

log = logging.getLogger("imgcls.worker")

State = Literal["loading", "ready", "failed", "stopped"]


class NonFiniteOutputError(RuntimeError):
    """The runtime returned NaN or inf for some images."""


@dataclass(frozen=True)
class _RunningBatch:
    """The handle :meth:`ModelWorker.start_batch` gives the batcher for :meth:`ModelWorker.finish_batch`."""

    size: int
    inference: asyncio.Future[np.ndarray]  # the probabilities, from the inference thread
    staged: StagedBatch | None = None  # with device preprocessing: the batch and its items' errors


class ModelWorker:
    def __init__(
        self,
        ref: BundleRef,
        settings: ModelSettings,
        decode_pool: ThreadPoolExecutor,
        max_image_pixels: int,
        explain: ExplainSettings | None = None,
    ):
        self.ref = ref
        self.settings = settings
        self.state: State = "failed" if not ref.ok else "loading"
        self.error: str | None = ref.error
        self.runtime: Runtime | None = None
        self.batcher: DynamicBatcher | None = None
        self.admission = Admission(settings.batching.max_queue_size)
        self._decode_pool = decode_pool
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"infer-{ref.name}-{ref.version}"
        )
        self._preprocess = (
            Preprocessor(ref.manifest.preprocess, max_image_pixels=max_image_pixels) if ref.ok else None
        )
        # Set at load when JPEG batches are decoded on the runtime's device (service.device_pipeline).
        self._device_preprocess: DevicePipeline | None = None
        # Observers (metrics): objects with batch(worker, BatchStats), and preprocessed(worker, seconds)
        # per image decoded on a decode thread, preprocessed_on_device(worker, seconds) per batch on the
        # device thread, computed(worker, seconds) per batch on the inference thread and
        # explained(worker, seconds, method) per explanation request on an explain thread.
        self.observers: list = []
        self._max_image_pixels = max_image_pixels
        self._explain_settings = explain or ExplainSettings()
        # Made once the runtime has loaded (it decides the device); never part of the batcher.
        self.explanations: Explanations | None = None

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def version(self) -> int:
        return self.ref.version

    @property
    def preprocessor(self) -> Preprocessor | None:
        """The bundle's decoder and transform (None for a bundle that failed to verify): what checks an
        image as a prediction would, for the routes that take images outside the batcher."""
        return self._preprocess

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _load_and_warm(self) -> Runtime:
        manifest = self.ref.manifest
        runtime = choose_runtime(
            manifest,
            self.ref.path,
            preference=self.settings.runtime,
            device=self.settings.device,
            intra_op_threads=self.settings.intra_op_threads,
        )
        limit = getattr(runtime, "max_batch_size", None)  # runtimes are duck-typed (tests use fakes)
        if limit is not None and self.settings.batching.max_batch_size > limit:
            # A TensorRT engine fails on a batch above its max shape, so the batcher must never form one.
            log.warning(
                "%s v%d: max_batch_size %d lowered to %d, the largest batch %s accepts",
                self.name,
                self.version,
                self.settings.batching.max_batch_size,
                limit,
                runtime.describe(),
            )
            batching = self.settings.batching.model_copy(
                update={
                    "max_batch_size": limit,
                    "preferred_batch_sizes": tuple(
                        s for s in self.settings.batching.preferred_batch_sizes if s <= limit
                    ),
                }
            )
            self.settings = self.settings.model_copy(update={"batching": batching})
        layout = None
        if self.settings.warmup:
            layout = warm_up(
                runtime,
                manifest.input.shape,
                self.settings.batching.max_batch_size,
                self.settings.channels_last,
            )
        elif self.settings.channels_last == "on" and hasattr(runtime, "choose_memory_format"):
            # nothing is measured for "on", so no warm-up is needed
            layout = runtime.choose_memory_format(np.zeros((1, *manifest.input.shape), np.float32), "on")
        if layout:
            log.info("%s v%d: %s", self.name, self.version, layout)
        try:
            self._device_preprocess = open_device_pipeline(
                self.settings.device_preprocessing,
                runtime,
                self._preprocess,
                name=self.name,
                version=self.version,
                on_staged=partial(self._tell, "preprocessed_on_device"),
            )
        except BaseException:
            runtime.close()
            raise
        return runtime

    async def load(self) -> None:
        if self.state == "failed":
            log.error("%s v%d not loaded: %s", self.name, self.version, self.error)
            return
        loop = asyncio.get_running_loop()
        loading = loop.run_in_executor(self._executor, self._load_and_warm)
        try:
            self.runtime = await asyncio.shield(loading)
        except asyncio.CancelledError:
            # Shut down mid-load: the executor thread finishes, then its runtime is closed there.
            self.state = "stopped"
            loading.add_done_callback(
                lambda f: None if f.cancelled() or f.exception() else self._executor.submit(f.result().close)
            )
            raise
        except ImgclsError as exc:
            self.state, self.error = "failed", str(exc)
            log.error("%s v%d not loaded: %s", self.name, self.version, exc)
            return
        except Exception as exc:  # a corrupt artifact can raise anything from inside a runtime
            self.state, self.error = "failed", describe_error(exc)
            log.exception("%s v%d failed to load", self.name, self.version)
            return
        batching = self.settings.batching
        self.batcher = DynamicBatcher(
            self,
            max_batch_size=batching.max_batch_size,
            max_queue_delay_ms=batching.max_queue_delay_ms,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            on_batch=self._observe,
            wait_only_for_incoming=batching.wait_only_for_incoming,
        )
        self.batcher.start()
        self.explanations = Explanations(
            self.ref.path,
            self.ref.manifest,
            self._explain_settings,
            device="cuda" if str(getattr(self.runtime, "device", "cpu")).startswith("cuda") else "cpu",
            max_image_pixels=self._max_image_pixels,
            observe=partial(self._tell, "explained"),
        )
        self.state = "ready"
        log.info("%s v%d ready on %s", self.name, self.version, self.runtime.describe())
        warning = self.ref.manifest.quality_warning
        if warning is not None:  # random weights, or a model no better than chance on its test split
            log.warning("%s v%d: %s", self.name, self.version, warning)

    def _observe(self, stats: BatchStats) -> None:
        for observer in self.observers:
            observer.batch(self, stats)

    def _check_finite(self, probabilities: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        finite = np.isfinite(probabilities).all(axis=1)
        if rows is not None:
            finite |= ~rows  # rows left out of the batch (failed images) are never returned
        if not finite.all():  # never hand NaN/inf to a client as a score
            raise NonFiniteOutputError(
                f"{int((~finite).sum())} of {len(probabilities)} images got NaN or inf scores"
            )
        return probabilities

    def _tell(self, event: str, *args: object) -> None:
        """``observer.<event>(worker, *args)`` for each observer, from a decode, inference or explain
        thread; an observer that fails (metrics) is logged and never fails the images."""
        for observer in self.observers:
            try:
                getattr(observer, event)(self, *args)
            except Exception:
                log.exception("%s v%d: %s observer failed", self.name, self.version, event)

    def _computed(self, started: float) -> None:
        # Timed here, in the inference thread: the batcher's own clock would also count the hand-off
        # to this thread and the event loop's delay in taking the result back.
        self._tell("computed", time.perf_counter() - started)

    def _infer(self, payloads: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(payloads)  # stacking too stays off the loop
        started = time.perf_counter()
        probabilities = self.runtime.infer(batch)
        self._computed(started)
        return self._check_finite(probabilities)

    def _infer_tensor(self, batch, rows: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        probabilities = self.runtime.infer_tensor(batch)
        self._computed(started)
        return self._check_finite(probabilities, rows)

    # The batcher's runner (service.batcher.BatchRunner): each batch in two stages.

    async def start_batch(self, payloads: Sequence[Any]) -> _RunningBatch:
        """Stage one: the batcher takes no other batch until it returns. On the host that is the whole
        inference (items queue up meanwhile, for a fuller next batch). With device preprocessing it is
        only staging the batch on the device: its inference is handed to the inference thread, and the
        next batch is staged while this one computes."""
        loop = asyncio.get_running_loop()
        if self._device_preprocess is None:
            inference = loop.run_in_executor(self._executor, self._infer, payloads)
            await asyncio.wait([inference])  # its failure is raised by finish_batch
            return _RunningBatch(len(payloads), inference)
        with self._translated_errors(len(payloads)):
            staged = await self._device_preprocess.stage(payloads)
        inference = loop.run_in_executor(self._executor, self._infer_tensor, staged.tensor, staged.rows)
        return _RunningBatch(len(payloads), inference, staged)

    async def finish_batch(self, running: _RunningBatch) -> list:
        """Stage two: the batch's probabilities, and each image the device stage could not decode
        answered with its own error."""
        with self._translated_errors(running.size):
            probabilities = await running.inference
        return list(probabilities) if running.staged is None else running.staged.answers(probabilities)

    @contextlib.contextmanager
    def _translated_errors(self, size: int) -> Iterator[None]:
        """Failures inside a batch -> the :class:`InferenceFailedError` its callers see (500)."""
        try:
            yield
        except NonFiniteOutputError as exc:
            log.error("%s v%d: %s", self.name, self.version, exc)
            raise InferenceFailedError(
                f"inference for {self.name} v{self.version} produced non-finite scores (NaN or inf): {exc}"
            ) from None
        except Exception as exc:
            log.exception("%s v%d: inference failed on a batch of %d", self.name, self.version, size)
            raise InferenceFailedError(
                f"inference failed for {self.name} v{self.version} ({type(exc).__name__}); "
                "the server log has the details"
            ) from exc

    def require_ready(self) -> DynamicBatcher:
        if self.state != "ready" or self.batcher is None:
            reason = f": {self.error}" if self.error else ""
            raise ModelNotReadyError(f"model {self.name} v{self.version} is {self.state}{reason}")
        return self.batcher

    async def preprocess(self, images: list[bytes]) -> list:
        """Decode and transform on the decode pool (with device preprocessing: check the headers and
        leave JPEGs encoded for the device); a bad image names its position."""
        loop = asyncio.get_running_loop()
        device = self._device_preprocess

        def decode(index: int, data: bytes):
            started = time.perf_counter()
            try:
                item = self._preprocess(data) if device is None else device.route(data, index)
            except BadInputError as exc:
                raise BadInputError(f"image {index}: {exc}") from None
            if not isinstance(item, EncodedJpeg):  # decoded here, on the CPU; JPEGs go to the device
                self._tell("preprocessed", time.perf_counter() - started)
            return item

        # One pool job per image, so the decode threads share a request's images; awaited as plain
        # futures, without a task per image.
        decodes = [loop.run_in_executor(self._decode_pool, decode, i, data) for i, data in enumerate(images)]
        try:
            return list(await asyncio.gather(*decodes))
        finally:
            # A bad image, the deadline or the client gone: decodes not started are taken off the pool
            # (never started); one already running cannot be stopped, and its result is dropped. From
            # the back: the pool hands out jobs in order, so a decode thread that skips a cancelled one
            # only ever reaches jobs that are cancelled already.
            for future in reversed(decodes):
                future.cancel()

    @contextlib.asynccontextmanager
    async def _deadline(self, timeout_s: float | None, arrived_at: float | None) -> AsyncIterator[None]:
        """The request's deadline, counted from its arrival (``arrived_at``, event-loop time; now when
        None), over everything awaited in the block.

        When it passes, the awaited work is cancelled and the caller gets :class:`DeadlineExceededError`
        (504) at once, wherever the images were: waiting for a decode thread, decoding, queued or computing.
        """
        timeout_s = timeout_s or self.default_timeout_s
        loop = asyncio.get_running_loop()
        start = arrived_at if arrived_at is not None else loop.time()
        if loop.time() >= start + timeout_s:  # spent before any work (reading the body): start none
            raise self._deadline_error(timeout_s)
        deadline = asyncio.timeout_at(start + timeout_s)
        try:
            async with deadline:
                yield
        except TimeoutError:
            if not deadline.expired():
                raise
            raise self._deadline_error(timeout_s) from None

    @staticmethod
    def _deadline_error(timeout_s: float) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"deadline of {timeout_s * 1000:.0f} ms passed before the images were processed; "
            "raise the request timeout or send fewer images"
        )

    async def predict_images(
        self,
        images: list[bytes],
        timeout_s: float | None = None,
        timings: dict[str, float] | None = None,
        arrived_at: float | None = None,
    ) -> np.ndarray:
        """Probabilities for encoded images; ``arrived_at`` (event-loop time) starts the deadline."""
        batcher = self.require_ready()
        with self.admission.admit(len(images)):  # a full model answers 503 before any decoding
            async with self._deadline(timeout_s, arrived_at):
                with batcher.incoming(len(images)):
                    arrays = await self.preprocess(images)
                return np.stack(await batcher.submit(arrays, timings))

    async def predict_pixels(
        self,
        pixels: np.ndarray,
        timeout_s: float | None = None,
        timings: dict[str, float] | None = None,
        arrived_at: float | None = None,
    ) -> np.ndarray:
        batcher = self.require_ready()
        expected = self.ref.manifest.input.shape
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise BadInputError(
                f"pixels must have shape [N, {', '.join(map(str, expected))}], got {list(pixels.shape)}"
            )
        with self.admission.admit(len(pixels)):
            async with self._deadline(timeout_s, arrived_at):
                return np.stack(await batcher.submit(list(pixels.astype(np.float32, copy=False)), timings))

    @property
    def default_timeout_s(self) -> float:
        return self.settings.batching.timeout_ms / 1000.0

    def require_explanations(self) -> Explanations:
        self.require_ready()
        assert self.explanations is not None  # made before the worker reports ready
        self.explanations.require_available()
        return self.explanations

    async def stop(self, drain: bool = True) -> None:
        self.admission.close()
        if self.explanations is not None:
            await self.explanations.stop()
        if self.batcher is not None:
            await self.batcher.stop(drain=drain)
        if self.state in ("ready", "loading"):
            self.state = "stopped"
        loop = asyncio.get_running_loop()
        if self.runtime is not None:
            await loop.run_in_executor(self._executor, self.runtime.close)  # the runtime's own thread
            self.runtime = None
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        if self._device_preprocess is not None:
            await self._device_preprocess.close()
