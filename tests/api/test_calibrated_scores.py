"""A bundle with a fitted temperature serves softmax(logits / T); one without serves softmax(logits)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from imgcls.manifest import load_manifest
from service.app import create_app
from service.preprocess import Preprocessor
from service.settings import BatchingSettings, Settings
from tests.api.conftest import class_image, wait_ready


def _with_temperature(bundle: Path, temperature: float | None) -> None:
    raw = json.loads((bundle / "manifest.json").read_text())
    raw.pop("temperature", None)
    if temperature is not None:
        raw["temperature"] = temperature
    (bundle / "manifest.json").write_text(json.dumps(raw))


def _logits(bundle: Path, images: list[bytes]) -> np.ndarray:
    preprocess = Preprocessor(load_manifest(bundle).preprocess)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.stack([preprocess(image) for image in images]).astype(np.float32)
    return session.run(None, {session.get_inputs()[0].name: batch})[0].astype(np.float64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
@pytest.mark.parametrize("temperature", [2.5, 0.5, None])
def test_served_scores_are_the_softmax_of_logits_over_the_manifest_temperature(
    model_repo: Path, runtime: str, temperature: float | None
):
    bundle = model_repo / "tiny" / "1"
    _with_temperature(bundle, temperature)
    settings = Settings(
        model_repo=model_repo,
        runtime=runtime,
        batching=BatchingSettings(max_batch_size=4, max_queue_delay_ms=2, max_queue_size=16),
        decode_threads=1,
        intra_op_threads=1,
    )
    images = [class_image(label, 900 + i) for i, label in enumerate((0, 1, 2, 2, 1))]
    expected = _softmax(_logits(bundle, images) / (temperature or 1.0))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        v1 = client.post(
            "/v1/models/tiny:predict",
            json={
                "instances": [{"b64": base64.b64encode(i).decode()} for i in images],
                "parameters": {"top_k": 3},
            },
        ).json()
        v2 = client.post(
            "/v2/models/tiny/infer",
            json={
                "inputs": [
                    {
                        "name": "image",
                        "shape": [len(images)],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(i).decode() for i in images],
                    }
                ]
            },
        ).json()
        metadata = client.get("/v2/models/tiny").json()
    served_v1 = np.zeros_like(expected)
    for row, prediction in enumerate(v1["predictions"]):
        for entry in prediction["top_k"]:
            served_v1[row, entry["index"]] = entry["score"]
    np.testing.assert_allclose(served_v1, expected, atol=2e-6)
    np.testing.assert_allclose(
        np.asarray(v2["outputs"][0]["data"]).reshape(expected.shape), expected, atol=2e-6
    )
    assert metadata["parameters"]["temperature"] == (temperature or 1.0)
