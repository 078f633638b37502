"""The service with channels-last TorchScript input switched on: the choice is logged, answers unchanged."""

from __future__ import annotations

import base64

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from tests.api.conftest import class_image, wait_ready


def _body(*images: bytes) -> dict:
    return {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}


def _scores(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["score"] for p in response.json()["predictions"]])


def test_channels_last_switched_on_is_logged_and_answers_as_the_default_layout(settings, caplog):
    images = [class_image(0, 330, "JPEG"), class_image(1, 331, "PNG")]
    pinned = settings.model_copy(update={"runtime": "torchscript"})
    with TestClient(create_app(pinned)) as client:
        wait_ready(client)
        expected = client.post("/v1/models/tiny:predict", json=_body(*images))
    with (
        caplog.at_level("INFO", logger="imgcls"),
        TestClient(create_app(pinned.model_copy(update={"channels_last": "on"}))) as client,
    ):
        wait_ready(client)
        served = client.post("/v1/models/tiny:predict", json=_body(*images))
    assert any("tiny v1: channels-last input" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(_scores(served), _scores(expected), atol=1e-5)
