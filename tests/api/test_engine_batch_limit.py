"""A runtime with a largest batch (a TensorRT engine's max shape) caps the batcher below it."""

from __future__ import annotations

import base64
import logging

import numpy as np
from fastapi.testclient import TestClient

import service.worker as worker_module
from service.app import create_app
from tests.api.conftest import class_image, wait_ready


class CappedRuntime:
    """The real runtime, refusing batches above ``max_batch_size`` as an engine does."""

    max_batch_size = 2

    def __init__(self, inner):
        self.inner, self.sizes = inner, []
        self.name, self.device, self.precision = "tensorrt", inner.device, "fp16"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > self.max_batch_size:
            raise RuntimeError(f"engine max shape exceeded: {len(batch)}")
        self.sizes.append(len(batch))
        return self.inner.infer(batch)

    def describe(self) -> str:
        return "capped engine"

    def close(self) -> None:
        pass


def test_max_batch_size_is_lowered_to_the_engines_and_no_larger_batch_is_formed(
    settings, monkeypatch, caplog
):
    real = worker_module.choose_runtime
    built: list[CappedRuntime] = []
    monkeypatch.setattr(
        worker_module,
        "choose_runtime",
        lambda *a, **k: built.append(CappedRuntime(real(*a, **k))) or built[-1],
    )
    assert settings.batching.max_batch_size == 8
    with caplog.at_level(logging.WARNING, logger="imgcls"), TestClient(create_app(settings)) as client:
        wait_ready(client)
        config = client.get("/v2/models/tiny/config").json()
        images = [class_image(i % 3, 200 + i) for i in range(6)]
        body = {"instances": [{"b64": base64.b64encode(x).decode()} for x in images]}
        response = client.post("/v1/models/tiny:predict", json=body)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 6
    assert config["max_batch_size"] == 2
    assert built[0].sizes and max(built[0].sizes) <= 2  # warm-up and serving alike
    assert any("max_batch_size 8 lowered to 2" in r.getMessage() for r in caplog.records)
