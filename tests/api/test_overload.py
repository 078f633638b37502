"""Overload and faults through the HTTP layer, with a runtime the test holds at a gate."""

from __future__ import annotations

import asyncio
import base64
import threading

import httpx
import numpy as np
import pytest

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
    settings = settings.model_copy(
        update={"batching": BatchingSettings(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=1)}
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
        # 1-2 images computing + 4 queued can be held; the other 34-35 requests must be refused while stuck
        settled, previous = 0, -1
        for _ in range(500):  # wait until the refusals have all happened and nothing changes for 0.2 s
            done = sum(task.done() for task in flood)
            settled = settled + 1 if done == previous and done >= 34 else 0
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
        codes.count(503) == 34 and rejected_while_stuck == 34
    )  # refused while stuck, not after the jam cleared
    assert all(r.headers.get("retry-after") == "1" for r in results if r.status_code == 503)
