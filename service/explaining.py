"""Explanations for one served model version, apart from its predictions: their own threads, their own
bounded queue, their own deadline. Plain asyncio and threads, no HTTP.

An explanation needs gradients through the eager model (``imgcls.explain``) and costs several
predictions, so it never enters the prediction batcher: it runs on ``explain.concurrency`` threads
of its own, each with its own explainer (hooks are per model, so two threads never share one), with
``explain.threads`` torch threads each. The explainers load on the first request (a few seconds:
the eager model and pytorch-grad-cam), so a server that is never asked costs nothing for them. Admission counts images as the batcher's
does (503 past ``explain.max_queue_size``); the deadline covers the wait and the work (504); a
request cancelled before its turn (deadline, client gone) is never computed. Nothing outlives a
request: the maps are computed and rendered in the thread, and the hooks are gone when it returns.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.errors import ImgclsError, describe_error, describe_labels
from imgcls.manifest import Manifest
from service.admission import Admission
from service.errors import (
    BadInputError,
    DeadlineExceededError,
    InferenceFailedError,
    NotExplainableError,
    ServiceError,
)
from service.preprocess import Preprocessor
from service.settings import ExplainSettings

__all__ = ["ExplainedImage", "Explanations"]

log = logging.getLogger("imgcls.explain")


@dataclass(frozen=True)
class ExplainedImage:
    """One image's answer: the prediction, the explained class, and the map as PNGs."""

    probabilities: np.ndarray  # [classes], temperature-scaled when the bundle has a temperature
    explained_index: int
    method: str
    map_png: bytes  # grayscale, the image's size (after its EXIF orientation), 0..255 for [0, 1]
    map_shape: tuple[int, int]  # height, width
    overlay_png: bytes  # the map in jet over the image, RGB


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: a fifth of the time of 6, 10-20 % larger
    return buffer.getvalue()


def render(decoded, heatmap: np.ndarray) -> tuple[bytes, bytes]:
    """The map as an 8-bit grayscale PNG, and its overlay on the decoded image (uint8 ``[C, H, W]``)."""
    from PIL import Image

    from imgcls.explain.geometry import overlay

    grey = Image.fromarray(np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    pixels = decoded.permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    return _png(grey), _png(overlay(picture, heatmap))


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Explanations:
    """Explains images for one model version; :meth:`stop` at shutdown."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        settings: ExplainSettings,
        *,
        device: str,
        max_image_pixels: int,
        observe: Callable[[float, str], None] | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.settings = settings
        self.device = device
        self.admission = Admission(settings.max_queue_size)
        self._decode = Preprocessor(manifest.preprocess, max_image_pixels=max_image_pixels).decode
        self._observe = observe  # (seconds, method) per request computed, for the metrics
        self._explainers: queue.SimpleQueue = queue.SimpleQueue()  # one per thread, taken and given back
        self._executor = ThreadPoolExecutor(
            max_workers=settings.concurrency,
            thread_name_prefix=f"explain-{manifest.name}",
            initializer=self._init_thread,
        )
        self._loading: asyncio.Future | None = None
        self.methods: tuple[str, ...] = tuple(manifest.explain.methods) if manifest.explain else ()
        self.error: str | None = self._unexplainable_reason()

    def _unexplainable_reason(self) -> str | None:
        if not self.settings.enabled:
            return "explanations are switched off on this server (IMGCLS_EXPLAIN__ENABLED=false)"
        if self.manifest.explain is None:
            return (
                f"model {self.manifest.name} v{self.manifest.version} carries no eager weights for "
                "explanations (exported before imgcls could explain, or with export.explainable=false); "
                "re-export it with imgcls export and deploy the new version"
            )
        return None

    def _init_thread(self) -> None:
        import torch

        torch.set_num_threads(self.settings.threads)  # per thread: predictions keep their cores
        if self.settings.nice and hasattr(os, "setpriority"):
            # Linux schedules threads one by one, so this lowers only this thread: when the CPU is
            # saturated the prediction threads come first (docs/serving.md has the measurement).
            try:
                lowered = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.settings.nice)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), lowered)
            except OSError as exc:
                log.warning("explain thread keeps its priority: %s", exc)

    @property
    def state(self) -> str:
        """``unavailable`` (with :attr:`error`), ``idle`` (not asked yet), ``loading`` or ``ready``."""
        if self.error is not None:
            return "unavailable"
        if self._loading is None:
            return "idle"
        return "ready" if self._loading.done() else "loading"

    def _start_loading(self) -> asyncio.Future:
        """Load the explainers (one per thread, copies of the first) on an explain thread, once."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().run_in_executor(self._executor, self._load)
            self._loading.add_done_callback(self._loaded)
        return self._loading

    def _load(self) -> None:
        from imgcls.explain.bundle import load_explainer

        first = load_explainer(self.bundle_dir, self.manifest, device=self.device)
        self._explainers.put(first)
        for _ in range(self.settings.concurrency - 1):
            self._explainers.put(copy.deepcopy(first))

    def _loaded(self, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            log.info(
                "%s v%d: explanations ready (%s)",
                self.manifest.name,
                self.manifest.version,
                ", ".join(self.methods),
            )
            return
        self.error = str(exc) if isinstance(exc, ImgclsError) else describe_error(exc)
        log.error(
            "%s v%d: explanations unavailable: %s", self.manifest.name, self.manifest.version, self.error
        )

    def require_available(self) -> None:
        """Raise now, before any body is read, when no explanation can be given."""
        if self.error is not None:
            raise NotExplainableError(self.error)
        self.admission.check_room()

    def resolve(self, label: object, method: object) -> tuple[int | None, str]:
        """The class index for a ``label`` parameter (a label, or None for the prediction) and the method
        (None: the model's default)."""
        if method is None:
            method = self.methods[0]
        if not isinstance(method, str) or method not in self.methods:
            raise BadInputError(
                f"method {method!r}: this model explains with {', '.join(self.methods)}"
                + ("" if "rollout" in self.methods else " (rollout needs a vision transformer)")
            )
        if label is None:
            return None, method
        labels = self.manifest.labels
        if not isinstance(label, str) or label not in labels:
            raise BadInputError(
                f"label {label!r} is not a class of this model; its classes: {describe_labels(labels)}"
            )
        return labels.index(label), method

    def _explain(self, images: Sequence[bytes], wanted: int | None, method: str) -> list[ExplainedImage]:
        decoded = []
        for index, data in enumerate(images):
            try:
                decoded.append(self._decode(data))
            except BadInputError as exc:
                raise BadInputError(f"image {index}: {exc}") from None
        explainer = self._explainers.get()
        started = time.perf_counter()
        try:
            results = explainer.explain(
                decoded, [wanted] * len(decoded), method=method, batch_size=len(decoded)
            )
        except Exception as exc:
            log.exception("%s v%d: explanation failed", self.manifest.name, self.manifest.version)
            raise InferenceFailedError(
                f"explaining with {self.manifest.name} v{self.manifest.version} failed "
                f"({type(exc).__name__}); the server log has the details"
            ) from exc
        finally:
            self._explainers.put(explainer)
        answers = []
        for image, result in zip(decoded, results, strict=True):
            map_png, overlay_png = render(image, result.heatmap)
            answers.append(
                ExplainedImage(
                    probabilities=result.probabilities,
                    explained_index=result.explained_index,
                    method=method,
                    map_png=map_png,
                    map_shape=tuple(result.heatmap.shape),
                    overlay_png=overlay_png,
                )
            )
        if self._observe is not None:
            self._observe(time.perf_counter() - started, method)
        return answers

    async def explain(
        self,
        images: list[bytes],
        *,
        label_index: int | None,
        method: str,
        arrived_at: float | None = None,
    ) -> list[ExplainedImage]:
        """Explain encoded images, waiting for the explainers to load if they still are; 503 when the
        explain queue is full, 504 past ``explain.timeout_ms`` from ``arrived_at`` (event-loop time)."""
        if self.error is not None:
            raise NotExplainableError(self.error)
        loop = asyncio.get_running_loop()
        timeout_s = self.settings.timeout_ms / 1000.0
        start = arrived_at if arrived_at is not None else loop.time()
        with self.admission.admit(len(images)):
            deadline = asyncio.timeout_at(start + timeout_s)
            job = None
            try:
                async with deadline:
                    loading = self._start_loading()
                    if not loading.done():
                        # a deadline here leaves the loading to finish; its failure is self.error
                        await asyncio.wait([loading])
                    if self.error is not None:
                        raise NotExplainableError(self.error)
                    job = loop.run_in_executor(self._executor, self._explain, images, label_index, method)
                    return await job
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise DeadlineExceededError(
                    f"deadline of {timeout_s * 1000:.0f} ms passed before the explanation was ready; "
                    "retry later, send fewer images, or raise IMGCLS_EXPLAIN__TIMEOUT_MS"
                ) from None
            except ServiceError:
                raise
            except ImgclsError as exc:
                raise NotExplainableError(str(exc)) from None
            finally:
                if job is not None and not job.done():
                    job.cancel()  # not started yet: never computed; running: its result is dropped

    async def stop(self) -> None:
        self.admission.close()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
