"""The whole service with device preprocessing switched on (here on the CPU device): JPEG batches
decoded in the runtime's stage, two batches in flight, the same answers as the default path."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.api.conftest import class_image, wait_ready


def _body(*images: bytes) -> dict:
    return {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}


def _scores(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["score"] for p in response.json()["predictions"]])


def test_device_preprocessing_answers_exactly_as_the_cpu_path(settings):
    images = [class_image(0, 300, "JPEG"), class_image(1, 301, "PNG"), class_image(2, 302, "JPEG")]
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        expected = client.post("/v1/models/tiny:predict", json=_body(*images))
    on = settings.model_copy(update={"device_preprocessing": "on"})
    with TestClient(create_app(on)) as client:
        wait_ready(client)
        worker = client.app.state.registry.get("tiny")
        assert worker._device_preprocess is not None
        served = client.post("/v1/models/tiny:predict", json=_body(*images))
        pixels = client.post("/v1/models/tiny:predict", json=_body(images[1]))  # PNG: decoded on the CPU
    assert [p["label"] for p in served.json()["predictions"]] == [
        p["label"] for p in expected.json()["predictions"]
    ]
    np.testing.assert_allclose(_scores(served), _scores(expected), atol=1e-6)
    np.testing.assert_allclose(_scores(pixels), _scores(expected)[1:2], atol=1e-6)


def test_device_batches_and_cpu_decoded_images_are_timed_in_their_own_metrics(settings):
    on = settings.model_copy(update={"device_preprocessing": "on"})
    jpegs = [class_image(0, 320, "JPEG"), class_image(1, 321, "JPEG")]
    with TestClient(create_app(on)) as client:
        wait_ready(client)
        assert (
            client.post("/v1/models/tiny:predict", json=_body(*jpegs, class_image(2, 322, "PNG"))).status_code
            == 200
        )
        text = client.get("/metrics").text
    counts = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(
            ("imgcls_preprocess_duration_seconds_count", "imgcls_device_preprocess_duration_seconds_count")
        )
    }
    assert counts["imgcls_preprocess_duration_seconds_count"] == 1  # the PNG, on a decode thread
    assert counts["imgcls_device_preprocess_duration_seconds_count"] >= 1  # per device batch, not per image


def test_a_corrupt_jpeg_fails_its_own_request_with_its_position(settings):
    good = class_image(0, 310, "JPEG")
    truncated = good[: len(good) // 2]
    on = settings.model_copy(update={"device_preprocessing": "on"})
    with TestClient(create_app(on)) as client:
        wait_ready(client)
        bad = client.post("/v1/models/tiny:predict", json=_body(good, truncated))
        fine = client.post("/v1/models/tiny:predict", json=_body(good))
    assert bad.status_code == 400
    assert "image 1: corrupt or truncated image" in bad.json()["error"]
    assert fine.status_code == 200


def test_a_device_decoder_that_fails_its_warm_up_fails_the_load_when_forced_on(settings, monkeypatch):
    import service.device_preprocess as module

    def broken(*args, **kwargs):
        raise RuntimeError("nvJPEG is not available")

    monkeypatch.setattr(module, "decode_jpeg", broken)
    on = settings.model_copy(update={"device_preprocessing": "on"})
    with TestClient(create_app(on)) as client:
        deadline = time.monotonic() + 30
        while "error" not in (status := client.get("/v1/models/tiny").json()).get("versions", [{}])[0]:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
    assert status["versions"][0]["error"] == "RuntimeError: nvJPEG is not available"
    assert status["ready"] is False


@pytest.mark.cuda
def test_on_cuda_auto_decodes_jpeg_batches_on_the_gpu_and_agrees_with_the_cpu_path(settings):
    images = [class_image(i % 3, 320 + i, "JPEG") for i in range(6)]
    with TestClient(create_app(settings.model_copy(update={"device": "cpu"}))) as client:
        wait_ready(client)
        expected = client.post("/v1/models/tiny:predict", json=_body(*images))
    gpu = settings.model_copy(update={"device": "cuda", "runtime": "torchscript"})
    with TestClient(create_app(gpu)) as client:
        wait_ready(client)
        worker = client.app.state.registry.get("tiny")
        assert worker._device_preprocess is not None and worker._device_preprocess.device.type == "cuda"
        served = client.post("/v1/models/tiny:predict", json=_body(*images))
    assert [p["label"] for p in served.json()["predictions"]] == [
        p["label"] for p in expected.json()["predictions"]
    ]
    np.testing.assert_allclose(_scores(served), _scores(expected), atol=2e-2)  # FP16 and nvJPEG
