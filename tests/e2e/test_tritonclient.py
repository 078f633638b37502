"""The real Triton HTTP client against a live uvicorn on 127.0.0.1: no adaptation on the client side."""

from __future__ import annotations

import numpy as np
import pytest

from tests.api.conftest import class_image

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture
def client(server_url: str):
    triton = httpclient.InferenceServerClient(url=server_url)
    yield triton
    triton.close()


def _images(*labels: int) -> np.ndarray:
    return np.array([class_image(label, 900 + i) for i, label in enumerate(labels)], dtype=np.object_)


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "imgcls" and "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata("tiny", "1")
    assert [i["name"] for i in model["inputs"]] == ["image", "pixels"]
    config = client.get_model_config("tiny")
    assert config["max_batch_size"] == 8


@pytest.mark.parametrize("binary_output", [True, False])
def test_binary_image_input_returns_probabilities(client, binary_output: bool):
    images = _images(0, 1, 2)
    infer_input = httpclient.InferInput("image", [3], "BYTES")
    infer_input.set_data_from_numpy(images, binary_data=True)
    output = httpclient.InferRequestedOutput("probabilities", binary_data=binary_output)
    result = client.infer("tiny", [infer_input], outputs=[output], request_id="abc")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert result.get_response()["id"] == "abc"


@pytest.mark.parametrize("binary_data", [True, False])
def test_pixels_input_in_binary_and_json(client, binary_data: bool):
    pixels = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    infer_input = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    infer_input.set_data_from_numpy(pixels, binary_data=binary_data)
    result = client.infer("tiny", [infer_input], model_version="1")
    assert result.as_numpy("probabilities").shape == (4, 3)


def test_classification_output_as_triton_returns_it(client):
    infer_input = httpclient.InferInput("image", [2], "BYTES")
    infer_input.set_data_from_numpy(_images(2, 0), binary_data=True)
    output = httpclient.InferRequestedOutput("probabilities", class_count=3)
    top = client.infer("tiny", [infer_input], outputs=[output]).as_numpy("probabilities")
    assert top.shape == (2, 3)
    score, index, label = top[0][0].decode().split(":")
    assert label == f"class_{index}" and 0 < float(score) <= 1


def test_errors_reach_the_client_as_messages(client):
    infer_input = httpclient.InferInput("image", [1], "BYTES")
    infer_input.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="image 0: not a decodable image"):
        client.infer("tiny", [infer_input])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [infer_input])


def test_concurrent_async_requests_all_succeed(client):
    pending = []
    for i in range(16):
        infer_input = httpclient.InferInput("image", [1], "BYTES")
        infer_input.set_data_from_numpy(_images(i % 3), binary_data=True)
        pending.append(client.async_infer("tiny", [infer_input]))
    results = [p.get_result() for p in pending]
    assert all(r.as_numpy("probabilities").shape == (1, 3) for r in results)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_accepted(client, algorithm: str):
    infer_input = httpclient.InferInput("image", [2], "BYTES")
    infer_input.set_data_from_numpy(_images(0, 1), binary_data=True)
    result = client.infer("tiny", [infer_input], request_compression_algorithm=algorithm)
    assert result.as_numpy("probabilities").shape == (2, 3)


def test_the_request_timeout_parameter_is_honoured(client):
    infer_input = httpclient.InferInput("image", [1], "BYTES")
    infer_input.set_data_from_numpy(_images(0), binary_data=True)
    # a generous timeout passes; the parameter reaches the server as microseconds and is validated there
    assert client.infer("tiny", [infer_input], timeout=5_000_000).as_numpy("probabilities").shape == (1, 3)
