"""Overload and faults through the HTTP layer, with a runtime the test holds at a gate."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import service.worker as worker_module
from service.app import create_app
from service.settings import BatchingSettings, ModelOverrides
from tests.api.conftest import class_image


class GatedRuntime:
    """Wraps the real runtime; each batch waits for the gate, and can be made to fail."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []
        self.fail = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.gate.is_set():
            self.started.set()
            self.gate.wait(10)
        self.batches.append(len(batch))
        if self.fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner.infer(batch)

    def describe(self) -> str:
        return "gated"

    def close(self) -> None:
        self.gate.set()


@pytest.fixture
def gated(monkeypatch):
    made: list[GatedRuntime] = []
    real = worker_module.choose_runtime

    def choose(*args, **kwargs):
        runtime = GatedRuntime(real(*args, **kwargs))
        runtime.gate.set()  # open during warm-up
        made.append(runtime)
        return runtime

    monkeypatch.setattr(worker_module, "choose_runtime", choose)
    return made


def _body(*labels: int) -> dict:
    return {"instances": [{"b64": base64.b64encode(class_image(label)).decode()} for label in labels]}


def _run(settings, scenario):
    async def main():
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await app.state.registry.loaded.wait()
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
                return await scenario(app, http)

    return asyncio.run(main())


async def _wait(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.01)


def test_a_full_queue_answers_503_with_retry_after_at_once(settings, gated):
    settings = settings.model_copy(  # room for one image computing and one queued
        update={"batching": BatchingSettings(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)}
    )

    async def scenario(app, http):
        runtime = gated[0]
        runtime.gate.clear()
        running = asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(0)))
        await _wait(runtime.started)
        queued = asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(1)))
        while app.state.registry.get("tiny").batcher.queue_depth < 1:
            await asyncio.sleep(0.01)
        rejected = await http.post("/v1/models/tiny:predict", json=_body(2))
        runtime.gate.set()
        return rejected, await running, await queued

    rejected, running, queued = _run(settings, scenario)
    assert rejected.status_code == 503
    assert rejected.headers["retry-after"] == "1"
    assert "queue full" in rejected.json()["error"]
    assert running.status_code == queued.status_code == 200


def test_a_request_whose_deadline_passes_in_the_queue_gets_504(settings, gated):
    settings = settings.model_copy(
        update={
            "batching": BatchingSettings(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=8),
            "models": {"tiny": ModelOverrides(timeout_ms=100)},
        }
    )

    async def scenario(app, http):
        runtime = gated[0]
        runtime.gate.clear()
        running = asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(0)))
        await _wait(runtime.started)
        late = await http.post("/v1/models/tiny:predict", json=_body(1))
        runtime.gate.set()
        await running
        return late

    late = _run(settings, scenario)
    assert late.status_code == 504
    assert "deadline of 100 ms passed" in late.json()["error"]


def test_a_failing_runtime_answers_500_without_internals(settings, gated):
    async def scenario(app, http):
        gated[0].fail = True
        return await http.post("/v1/models/tiny:predict", json=_body(0))

    response = _run(settings, scenario)
    assert response.status_code == 500
    assert response.json() == {
        "error": "inference failed for tiny v1 (RuntimeError); the server log has the details"
    }
    assert "illegal memory" not in response.text


def test_until_disconnect_cancels_the_work_when_the_client_leaves():
    from starlette.requests import Request

    from service.errors import ClientDisconnectedError
    from service.routes_common import until_disconnect

    async def scenario():
        left = asyncio.Event()

        async def receive():
            await left.wait()
            return {"type": "http.disconnect"}

        request = Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)
        work_cancelled = asyncio.Event()

        async def work():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                work_cancelled.set()
                raise

        waiting = asyncio.create_task(until_disconnect(request, work()))
        await asyncio.sleep(0.01)
        left.set()
        with pytest.raises(ClientDisconnectedError):
            await waiting
        return work_cancelled.is_set()

    assert asyncio.run(scenario())


def test_health_answers_at_once_while_models_are_still_warming_up(settings, monkeypatch):
    real = worker_module.choose_runtime
    made: list[GatedRuntime] = []

    def choose(*args, **kwargs):
        runtime = GatedRuntime(real(*args, **kwargs))  # gate closed: warm-up waits
        made.append(runtime)
        return runtime

    monkeypatch.setattr(worker_module, "choose_runtime", choose)

    async def scenario(app, http):
        while not made:
            await asyncio.sleep(0.01)
        health = await http.get("/healthz")
        not_ready = await http.get("/readyz")
        v2_not_ready = await http.get("/v2/health/ready")
        early = await http.post("/v1/models/tiny:predict", json=_body(0))
        made[0].gate.set()
        await app.state.registry.loaded.wait()
        return health, not_ready, v2_not_ready, early, await http.get("/readyz")

    async def main():
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
                return await scenario(app, http)

    health, not_ready, v2_not_ready, early, ready = asyncio.run(main())
    assert health.status_code == 200
    assert not_ready.status_code == 503 and not_ready.json()["models"] == {"tiny/1": "loading"}
    assert v2_not_ready.status_code == 503
    assert early.status_code == 503 and "is loading" in early.json()["error"]
    assert ready.status_code == 200


def test_a_failed_batch_fails_only_its_requests_and_the_next_batch_serves(settings, gated):
    async def scenario(app, http):
        runtime = gated[0]
        runtime.fail = True
        failed = await http.post("/v1/models/tiny:predict", json=_body(0))
        runtime.fail = False
        recovered = await http.post("/v1/models/tiny:predict", json=_body(1))
        return failed, recovered

    failed, recovered = _run(settings, scenario)
    assert failed.status_code == 500
    assert recovered.status_code == 200


def test_health_and_metrics_stay_fast_while_predictions_overflow(settings, gated):
    """Beyond capacity: excess predictions are refused fast with 503 and probes answer quickly."""
    import time

    settings = settings.model_copy(
        update={"batching": BatchingSettings(max_batch_size=2, max_queue_delay_ms=1, max_queue_size=4)}
    )

    async def scenario(app, http):
        runtime = gated[0]
        runtime.gate.clear()  # the runtime is stuck: every extra request must be rejected, not queued
        flood = [
            asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(i % 3))) for i in range(40)
        ]
        await _wait(runtime.started)
        # 4 images are held (computing or queued); the other 36 requests must be refused while stuck
        settled, previous = 0, -1
        for _ in range(500):  # wait until the refusals have all happened and nothing changes for 0.2 s
            done = sum(task.done() for task in flood)
            settled = settled + 1 if done == previous and done >= 36 else 0
            if settled >= 10:
                break
            previous = done
            await asyncio.sleep(0.02)
        probes = []
        for path in ["/healthz", "/readyz", "/metrics"] * 5:
            started = time.perf_counter()
            response = await http.get(path)
            probes.append((path, response.status_code, time.perf_counter() - started))
        rejected_while_stuck = sum(1 for task in flood if task.done() and task.result().status_code == 503)
        runtime.gate.set()
        results = await asyncio.gather(*flood)
        return probes, rejected_while_stuck, results

    probes, rejected_while_stuck, results = _run(settings, scenario)
    assert all(status == 200 for _, status, _ in probes), probes
    latencies = sorted(seconds for _, _, seconds in probes)
    assert latencies[len(latencies) // 2] < 0.1, latencies  # median probe under 100 ms while overloaded
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 503}
    assert (
        codes.count(503) == 36 and rejected_while_stuck == 36
    )  # refused while stuck, not after the jam cleared
    assert all(r.headers.get("retry-after") == "1" for r in results if r.status_code == 503)


# --- admission and deadlines over the whole wait, decoding included ---


@pytest.fixture
def slow_decode(monkeypatch):
    """Every image's decode waits at ``gate`` on its decode thread; ``started`` lists the images whose
    decode began. Open the gate (or close it again) from the test."""
    gate = threading.Event()
    started: list[bytes] = []

    class SlowPreprocessor(worker_module.Preprocessor):
        def __call__(self, data: bytes) -> np.ndarray:
            started.append(data)
            if data != b"junk":  # junk fails at once, as a corrupt file does
                gate.wait(10)
            return super().__call__(data)

    monkeypatch.setattr(worker_module, "Preprocessor", SlowPreprocessor)
    return SimpleNamespace(gate=gate, started=started)


async def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


JSON = {"content-type": "application/json"}


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise KeyError(name)


def test_images_waiting_for_decode_count_against_the_queue_until_answered(settings, gated, slow_decode):
    settings = settings.model_copy(
        update={
            "decode_threads": 1,
            "batching": BatchingSettings(max_batch_size=2, max_queue_delay_ms=0, max_queue_size=4),
        }
    )

    async def scenario(app, http):
        worker = app.state.registry.get("tiny")
        # three images: one decoding, two waiting for the only decode thread; none reached the batcher
        first = asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(0, 1, 2)))
        await _until(lambda: len(slow_decode.started) == 1)
        refused = await http.post("/v1/models/tiny:predict", json=_body(0, 1))  # 3 + 2 > 4
        fits = asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(2)))  # 3 + 1 = 4
        await _until(lambda: worker.admission.pending == 4)
        # full: refused before the body is read (this one is not even JSON)
        full = await http.post("/v1/models/tiny:predict", content=b"{not json", headers=JSON)
        batcher_queue = worker.batcher.queue_depth
        scraped = (await http.get("/metrics")).text
        slow_decode.gate.set()
        answered = [await first, await fits]
        pending_after = worker.admission.pending
        again = await http.post("/v1/models/tiny:predict", json=_body(0, 1))
        return refused, full, batcher_queue, scraped, answered, pending_after, again

    refused, full, batcher_queue, scraped, answered, pending_after, again = _run(settings, scenario)
    assert batcher_queue == 0  # the old check, the batcher's queue alone, would have let it in
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "queue full (3 of 4 images accepted and not yet answered)" in refused.json()["error"]
    assert full.status_code == 503 and "queue full (4 of 4 images" in full.json()["error"]
    model = {"model": "tiny", "version": "1"}
    assert _metric(scraped, "imgcls_rejected_total", **model, reason="queue_full") == 2
    assert _metric(scraped, "imgcls_queue_depth", **model) == 4
    assert _metric(scraped, "imgcls_decode_queue_depth", **model) == 4
    assert _metric(scraped, "imgcls_queue_capacity", **model) == 4
    assert [response.status_code for response in answered] == [200, 200]
    assert pending_after == 0
    assert again.status_code == 200  # admitted again once the others were answered


def test_a_deadline_passing_while_waiting_for_decode_answers_504_at_the_deadline(
    settings, gated, slow_decode
):
    settings = settings.model_copy(
        update={"decode_threads": 1, "models": {"tiny": ModelOverrides(timeout_ms=300)}}
    )

    async def scenario(app, http):
        worker, runtime = app.state.registry.get("tiny"), gated[0]
        warmup_batches = len(runtime.batches)
        sent = time.monotonic()
        decoding = asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(0)))
        await _until(lambda: len(slow_decode.started) == 1)  # holds the only decode thread
        waiting = await http.post("/v1/models/tiny:predict", json=_body(1, 2))
        waited = time.monotonic() - sent
        stuck = await decoding  # its decode is still running: it cannot be stopped, only dropped
        stuck_after = time.monotonic() - sent
        pending = worker.admission.pending
        slow_decode.gate.set()
        await asyncio.sleep(0.3)  # the running decode finishes; nothing else may start
        return waiting, waited, stuck, stuck_after, pending, runtime.batches[warmup_batches:]

    waiting, waited, stuck, stuck_after, pending, computed = _run(settings, scenario)
    assert waiting.status_code == 504
    assert "deadline of 300 ms passed" in waiting.json()["error"]
    assert stuck.status_code == 504
    assert waited < 0.3 + 1.5 and stuck_after < 0.3 + 1.5  # at about the deadline, not when the gate opens
    assert pending == 0
    assert len(slow_decode.started) == 1  # the waiting request's images were never decoded...
    assert computed == []  # ...and no image of either request was computed


def test_the_deadline_counts_from_arrival_so_a_slow_body_read_uses_it_up(
    settings, gated, slow_decode, monkeypatch
):
    import service.routes_v1 as routes_v1

    settings = settings.model_copy(update={"models": {"tiny": ModelOverrides(timeout_ms=300)}})
    read_images = routes_v1._read_images

    async def slow_read(request):  # as if the body took 0.4 s to arrive and parse
        await asyncio.sleep(0.4)
        return await read_images(request)

    monkeypatch.setattr(routes_v1, "_read_images", slow_read)

    async def scenario(app, http):
        runtime = gated[0]
        warmup_batches = len(runtime.batches)
        answer = await http.post("/v1/models/tiny:predict", json=_body(0))
        return answer, runtime.batches[warmup_batches:], app.state.registry.get("tiny").admission.pending

    answer, computed, pending = _run(settings, scenario)
    assert answer.status_code == 504
    assert slow_decode.started == []  # nothing decoded
    assert computed == []  # nor computed
    assert pending == 0


def test_a_bad_image_stops_its_request_s_decodes_that_have_not_started(settings, gated, slow_decode):
    settings = settings.model_copy(update={"decode_threads": 2})
    first, second = class_image(1, index=101), class_image(2, index=102)

    async def scenario(app, http):
        holding = asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(0)))
        await _until(lambda: len(slow_decode.started) == 1)  # one decode thread held at the gate
        images = [b"junk", first, second]  # the other thread fails the junk, then takes the next image
        body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}
        bad = await http.post("/v1/models/tiny:predict", json=body)
        slow_decode.gate.set()
        held = await holding
        await asyncio.sleep(0.3)  # time for the pool to take anything still left for it
        return bad, held, app.state.registry.get("tiny").admission.pending

    bad, held, pending = _run(settings, scenario)
    assert bad.status_code == 400 and "image 0" in bad.json()["error"]
    assert held.status_code == 200
    assert second not in slow_decode.started  # answered 400: its last image was never decoded
    assert pending == 0


def test_every_way_a_request_ends_gives_its_images_back(settings, gated, slow_decode):
    settings = settings.model_copy(
        update={
            "decode_threads": 1,
            "batching": BatchingSettings(max_batch_size=8, max_queue_delay_ms=0, max_queue_size=16),
            "models": {"tiny": ModelOverrides(timeout_ms=1000)},
        }
    )

    async def scenario(app, http):
        worker, runtime = app.state.registry.get("tiny"), gated[0]
        shape = list(worker.ref.manifest.input.shape)
        pixels = {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [2, *shape],
                    "datatype": "FP32",
                    "data": [0.0] * (2 * int(np.prod(shape))),
                }
            ]
        }
        image = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(class_image(1)).decode()],
                }
            ]
        }
        outcomes: list[tuple[str, int, int]] = []

        async def record(what: str, sending) -> None:
            response = await sending
            outcomes.append((what, response.status_code, worker.admission.pending))

        slow_decode.gate.set()
        await record("v1 json", http.post("/v1/models/tiny:predict", json=_body(0, 1)))
        files = [("file", ("a.png", class_image(2), "image/png"))]
        await record("v1 multipart", http.post("/v1/models/tiny:predict", files=files))
        await record("v2 image", http.post("/v2/models/tiny/infer", json=image))
        await record("v2 pixels", http.post("/v2/models/tiny/infer", json=pixels))
        bad = {"instances": [*_body(0)["instances"], {"b64": base64.b64encode(b"junk").decode()}]}
        await record("bad image", http.post("/v1/models/tiny:predict", json=bad))
        runtime.fail = True
        await record("runtime error", http.post("/v1/models/tiny:predict", json=_body(0)))
        runtime.fail = False
        slow_decode.gate.clear()
        await record("deadline decoding", http.post("/v1/models/tiny:predict", json=_body(0, 1)))
        gone = asyncio.create_task(http.post("/v1/models/tiny:predict", json=_body(0, 1)))
        await _until(lambda: worker.admission.pending == 2)  # the expired request's decode still runs
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await _until(lambda: worker.admission.pending == 0, timeout_s=2)  # the work is cancelled next
        outcomes.append(("cancelled decoding", 0, worker.admission.pending))
        slow_decode.gate.set()
        runtime.gate.clear()
        runtime.started.clear()
        await record("deadline computing", http.post("/v2/models/tiny/infer", json=pixels))
        gone = asyncio.create_task(http.post("/v2/models/tiny/infer", json=pixels))
        await _until(lambda: worker.admission.pending == 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await _until(lambda: worker.admission.pending == 0, timeout_s=2)  # the work is cancelled next
        outcomes.append(("cancelled queued", 0, worker.admission.pending))
        runtime.gate.set()
        await record("after", http.post("/v1/models/tiny:predict", json=_body(0)))
        return outcomes

    outcomes = _run(settings, scenario)
    assert [(what, code) for what, code, _ in outcomes] == [
        ("v1 json", 200),
        ("v1 multipart", 200),
        ("v2 image", 200),
        ("v2 pixels", 200),
        ("bad image", 400),
        ("runtime error", 500),
        ("deadline decoding", 504),
        ("cancelled decoding", 0),
        ("deadline computing", 504),
        ("cancelled queued", 0),
        ("after", 200),
    ]
    assert [(what, pending) for what, _, pending in outcomes] == [(what, 0) for what, _, _ in outcomes]
