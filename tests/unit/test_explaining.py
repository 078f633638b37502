"""The explain queue apart from HTTP: bounded admission, the deadline, cancellation before a request's
turn, and explainers that are never shared between threads."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from imgcls.manifest import load_manifest
from service.errors import BadInputError, DeadlineExceededError, NotExplainableError, QueueFullError
from service.explaining import Explanations
from service.settings import ExplainSettings
from tests.api.conftest import class_image


class SlowExplainer:
    """Stands in for imgcls.explain's Explainer: blocks until released, and records who ran it."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.calls: list[int] = []
        self.busy = False

    def explain(self, images, classes, *, method, batch_size):
        assert not self.busy, "one explainer used by two threads at once"
        self.busy = True
        try:
            self.release.wait(10)
            self.calls.append(len(images))
            return [
                SimpleNamespace(
                    probabilities=np.array([0.2, 0.3, 0.5]),
                    explained_index=2 if c is None else c,
                    heatmap=np.full(tuple(image.shape[-2:]), 0.5, dtype=np.float32),
                )
                for image, c in zip(images, classes, strict=True)
            ]
        finally:
            self.busy = False


@pytest.fixture
def manifest(tiny_bundle):
    bundle, _ = tiny_bundle
    return bundle, load_manifest(bundle)


def explanations(manifest, monkeypatch, release: threading.Event, **settings) -> tuple[Explanations, list]:
    bundle, loaded = manifest
    made: list[SlowExplainer] = []

    def fake_load(self) -> None:
        for _ in range(self.settings.concurrency):
            made.append(SlowExplainer(release))
            self._explainers.put(made[-1])

    monkeypatch.setattr(Explanations, "_load", fake_load)
    return Explanations(
        Path(bundle), loaded, ExplainSettings(**settings), device="cpu", max_image_pixels=10**7
    ), made


IMAGE = class_image(0, 400)


def test_a_full_explain_queue_refuses_at_once_and_a_request_too_big_for_it_is_a_bad_request(
    manifest, monkeypatch
):
    release = threading.Event()
    service, _ = explanations(manifest, monkeypatch, release, max_queue_size=2)

    async def scenario() -> None:
        running = asyncio.ensure_future(service.explain([IMAGE, IMAGE], label_index=None, method="gradcam"))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError, match="queue full"):
            service.require_available()
        with pytest.raises(QueueFullError):
            await service.explain([IMAGE], label_index=None, method="gradcam")
        with pytest.raises(BadInputError, match="can never fit"):
            await service.explain([IMAGE] * 3, label_index=None, method="gradcam")
        release.set()
        answers = await running
        assert [a.explained_index for a in answers] == [2, 2]
        assert service.admission.pending == 0
        await service.stop()

    asyncio.run(scenario())


def test_past_the_deadline_a_waiting_request_gets_504_and_is_never_computed(manifest, monkeypatch):
    release = threading.Event()
    service, made = explanations(manifest, monkeypatch, release, timeout_ms=200)

    async def scenario() -> None:
        first = asyncio.ensure_future(service.explain([IMAGE], label_index=None, method="gradcam"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="deadline of 200 ms"):
            await service.explain([IMAGE, IMAGE], label_index=None, method="gradcam")
        assert time.monotonic() - started < 1.0  # answered at the deadline, not when the thread frees
        with pytest.raises(DeadlineExceededError):
            await first  # the running one too: its result is dropped
        release.set()
        await asyncio.sleep(0.2)
        assert made[0].calls == [1]  # the waiting request of two images never ran
        await service.stop()

    asyncio.run(scenario())


def test_a_cancelled_request_is_never_computed_and_frees_its_place(manifest, monkeypatch):
    release = threading.Event()
    service, made = explanations(manifest, monkeypatch, release, max_queue_size=4)

    async def scenario() -> None:
        first = asyncio.ensure_future(service.explain([IMAGE], label_index=None, method="gradcam"))
        second = asyncio.ensure_future(
            service.explain([IMAGE, IMAGE, IMAGE], label_index=None, method="gradcam")
        )
        await asyncio.sleep(0.05)
        assert service.admission.pending == 4
        second.cancel()  # the client went away
        await asyncio.sleep(0.05)
        assert service.admission.pending == 1
        release.set()
        await first
        await asyncio.sleep(0.1)
        assert made[0].calls == [1]
        await service.stop()

    asyncio.run(scenario())


def test_concurrent_requests_each_get_an_explainer_of_their_own(manifest, monkeypatch):
    release = threading.Event()
    service, made = explanations(manifest, monkeypatch, release, concurrency=2)

    async def scenario() -> None:
        tasks = [
            asyncio.ensure_future(service.explain([IMAGE], label_index=1, method="gradcam")) for _ in range(6)
        ]
        await asyncio.sleep(0.05)
        release.set()
        answers = await asyncio.gather(*tasks)
        assert [a[0].explained_index for a in answers] == [1] * 6
        await service.stop()

    asyncio.run(scenario())
    assert len(made) == 2 and sum(len(m.calls) for m in made) == 6


def test_maps_come_back_as_png_at_the_image_size(manifest, monkeypatch):
    release = threading.Event()
    release.set()
    service, _ = explanations(manifest, monkeypatch, release)

    async def scenario():
        try:
            return await service.explain([IMAGE], label_index=None, method="gradcam")
        finally:
            await service.stop()

    (answer,) = asyncio.run(scenario())
    import io

    from PIL import Image

    heat = Image.open(io.BytesIO(answer.map_png))
    assert heat.mode == "L" and heat.size[::-1] == answer.map_shape
    assert np.asarray(heat).max() == 128  # 0.5 of 255, rounded
    assert Image.open(io.BytesIO(answer.overlay_png)).mode == "RGB"


def test_an_unknown_method_or_label_is_refused_before_any_work(manifest, monkeypatch):
    service, made = explanations(manifest, monkeypatch, threading.Event())

    with pytest.raises(BadInputError, match="explains with gradcam"):
        service.resolve(None, "lime")
    with pytest.raises(BadInputError, match="is not a class of this model"):
        service.resolve("dog", None)
    assert service.resolve("class_1", None) == (1, "gradcam")
    assert service.state == "idle" and made == []


def test_a_failed_load_makes_every_later_request_501(manifest, monkeypatch):
    bundle, loaded = manifest

    def broken(self) -> None:
        raise RuntimeError("weights.pt is not a checkpoint")

    monkeypatch.setattr(Explanations, "_load", broken)
    service = Explanations(Path(bundle), loaded, ExplainSettings(), device="cpu", max_image_pixels=10**7)

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(NotExplainableError, match="not a checkpoint"):
                await service.explain([IMAGE], label_index=None, method="gradcam")
        assert service.state == "unavailable"
        await service.stop()

    asyncio.run(scenario())


def test_explain_threads_run_at_the_configured_niceness(manifest, monkeypatch):
    import os

    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priorities on this OS")
    release = threading.Event()
    release.set()
    service, _ = explanations(manifest, monkeypatch, release, nice=7)

    async def scenario() -> int:
        try:
            await service.explain([IMAGE], label_index=None, method="gradcam")
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                service._executor, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            )
        finally:
            await service.stop()

    assert asyncio.run(scenario()) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
