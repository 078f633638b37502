"""Prometheus metrics after real traffic through the app, read back with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import httpx
import numpy as np
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import service.worker as worker_module
from service.app import create_app
from service.metrics import batch_size_buckets
from tests.api.conftest import class_image, wait_ready


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _instances(*images: bytes) -> dict:
    return {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}


def test_inference_duration_is_the_runtimes_own_time_not_the_wait_for_the_event_loop(client, monkeypatch):
    loop = client.portal.call(asyncio.get_running_loop)
    runtime = client.app.state.registry.get("tiny").runtime
    original = runtime.infer

    def slow_infer_on_a_busy_loop(batch):
        loop.call_soon_threadsafe(time.sleep, 0.3)  # the event loop takes the result back 0.3 s late
        time.sleep(0.05)
        return original(batch)

    monkeypatch.setattr(runtime, "infer", slow_infer_on_a_busy_loop)
    assert client.post("/v1/models/tiny:predict", json=_instances(class_image(0))).status_code == 200
    samples = _samples(client.get("/metrics").text)
    model = {"model": "tiny", "version": "1"}
    assert _value(samples, "imgcls_request_duration_seconds_sum", **model, protocol="v1") >= 0.3
    assert 0.05 <= _value(samples, "imgcls_inference_duration_seconds_sum", **model) < 0.25


def test_traffic_shows_up_in_every_metric(client):
    assert (
        client.post("/v1/models/tiny:predict", json=_instances(class_image(0), class_image(1))).status_code
        == 200
    )
    v2 = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(class_image(2)).decode()],
            }
        ]
    }
    assert client.post("/v2/models/tiny/infer", json=v2).status_code == 200
    assert client.post("/v1/models/tiny:predict", json=_instances(b"junk")).status_code == 400
    assert client.post("/v1/models/nope:predict", json=_instances(b"junk")).status_code == 404

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    model = {"model": "tiny", "version": "1"}
    assert _value(samples, "imgcls_requests_total", **model, protocol="v1", code="200") == 1
    assert _value(samples, "imgcls_requests_total", **model, protocol="v2", code="200") == 1
    assert _value(samples, "imgcls_requests_total", **model, protocol="v1", code="400") == 1
    assert _value(samples, "imgcls_requests_total", model="", version="", protocol="v1", code="404") == 1
    assert _value(samples, "imgcls_images_total", **model) == 3
    assert _value(samples, "imgcls_rejected_total", **model, reason="bad_input") == 1
    assert _value(samples, "imgcls_queue_duration_seconds_count", **model) == 3
    assert (
        _value(samples, "imgcls_preprocess_duration_seconds_count", **model) == 3
    )  # successfully decoded images
    assert _value(samples, "imgcls_request_duration_seconds_count", **model, protocol="v1") == 2
    assert _value(samples, "imgcls_inference_duration_seconds_count", **model) >= 1
    assert _value(samples, "imgcls_batch_size_bucket", **model, le="8.0") >= 1
    assert _value(samples, "imgcls_queue_depth", **model) == 0
    assert _value(samples, "imgcls_model_ready", **model) == 1
    assert (
        _value(samples, "imgcls_model_info", **model, runtime="onnxruntime", precision="fp32", device="cpu")
        == 1
    )
    assert _value(samples, "imgcls_inflight_requests") == 0
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)
    assert not any(name.startswith("imgcls_gpu") for name, _ in samples)  # absent, not zero, without a GPU


def test_batch_size_buckets_are_powers_of_two_up_to_the_max():
    assert batch_size_buckets(1) == (1.0,)
    assert batch_size_buckets(8) == (1.0, 2.0, 4.0, 8.0)
    assert batch_size_buckets(24) == (1.0, 2.0, 4.0, 8.0, 16.0, 24.0)


def test_a_body_refused_by_its_content_length_is_counted_as_too_large(settings):
    small = settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(small)) as client:
        wait_ready(client)
        assert client.post("/v1/models/tiny:predict", content=b"x" * 5000).status_code == 413
        samples = _samples(client.get("/metrics").text)
    assert _value(samples, "imgcls_rejected_total", model="", version="", reason="too_large") == 1


def test_metrics_can_move_to_a_separate_port(settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with TestClient(create_app(settings.model_copy(update={"metrics_port": port}))) as client:
        wait_ready(client)
        assert client.get("/metrics").status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert scraped.status_code == 200 and "imgcls_model_ready" in scraped.text


def test_non_finite_scores_are_an_error_never_a_score(settings, monkeypatch):
    real = worker_module.choose_runtime

    class NaNAfterWarmup:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0
            self.name, self.device, self.precision = inner.name, inner.device, inner.precision

        def infer(self, batch):
            self.calls += 1
            out = self.inner.infer(batch)
            return out if self.calls <= 4 else np.full_like(out, np.nan)

        def describe(self):
            return "nan"

        def close(self):
            pass

    monkeypatch.setattr(worker_module, "choose_runtime", lambda *a, **k: NaNAfterWarmup(real(*a, **k)))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        response = client.post("/v1/models/tiny:predict", json=_instances(class_image(0)))
    assert response.status_code == 500
    assert "non-finite scores (NaN or inf): 1 of 1 images" in response.json()["error"]


def test_every_response_carries_a_request_id_and_prediction_requests_log_one_json_line(client, caplog):
    import json
    import logging

    from service.logs import JsonFormatter

    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "not valid!" * 20})
    assert len(generated.headers["x-request-id"]) == 32  # replaced by a fresh uuid4 hex
    with caplog.at_level(logging.INFO, logger="imgcls.request"):
        response = client.post(
            "/v1/models/tiny:predict",
            json=_instances(class_image(0), class_image(1)),
            headers={"X-Request-ID": "req-9"},
        )
    records = [r for r in caplog.records if r.name == "imgcls.request"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == "req-9" == response.headers["x-request-id"]
    assert (line["model"], line["version"], line["images"], line["status"], line["protocol"]) == (
        "tiny",
        "1",
        2,
        200,
        "v1",
    )
    assert line["latency_ms"] > 0 and line["queue_ms"] >= 0
    assert "b64" not in json.dumps(line)  # never image bytes


def test_gpu_gauges_come_from_nvml_when_a_gpu_is_there(monkeypatch):
    import sys
    import types

    from service.metrics import ServiceMetrics

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=2 * 1024**3, total=80 * 1024**3),
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=37),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    samples = _samples(ServiceMetrics(8).render().decode())
    assert _value(samples, "imgcls_gpu_utilization_ratio", gpu="0") == 0.37
    assert _value(samples, "imgcls_gpu_memory_used_bytes", gpu="0") == 2 * 1024**3
    assert _value(samples, "imgcls_gpu_memory_total_bytes", gpu="0") == 80 * 1024**3
