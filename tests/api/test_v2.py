"""Open Inference Protocol v2 through the in-process app: JSON, binary tensors, classification, errors."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from service.v2_codec import serialize_bytes
from tests.api.conftest import class_image


def _binary_request(header: dict, *chunks: bytes) -> tuple[bytes, dict]:
    json_part = json.dumps(header).encode()
    return json_part + b"".join(chunks), {"Inference-Header-Content-Length": str(len(json_part))}


def _split(response) -> tuple[dict, bytes]:
    length = int(response.headers["inference-header-content-length"])
    return json.loads(response.content[:length]), response.content[length:]


def test_server_metadata_always_lists_the_extensions(client):
    assert client.get("/v2").json() == {
        "name": "imgcls",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "classification"],
    }
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata_ready_and_config(client):
    metadata = client.get("/v2/models/tiny").json()
    assert metadata == {
        "name": "tiny",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 16, 16]},
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
        "parameters": metadata["parameters"],
    }
    parameters = metadata["parameters"]
    assert parameters["weights"] == "trained"
    assert 0.0 <= parameters["test_accuracy"] <= 1.0
    assert parameters["baseline_check"] in ("passed", "failed")
    # the 2-epoch tiny run is judged on a handful of test images: a warning exactly when it failed
    assert ("warning" in parameters) == (parameters["baseline_check"] == "failed")
    assert client.get("/v2/models/tiny/versions/1").json() == metadata
    assert client.get("/v2/models/tiny/versions/1/ready").json() == {"name": "tiny", "ready": True}
    config = client.get("/v2/models/tiny/config").json()
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
    assert [(i["name"], i["data_type"], i["dims"], i["optional"]) for i in config["input"]] == [
        ("image", "TYPE_STRING", [1], True),
        ("pixels", "TYPE_FP32", [3, 16, 16], True),
    ]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]}]


def test_json_infer_with_base64_images_echoes_the_id(client):
    images = [class_image(label, 600 + label) for label in (0, 1, 2)]
    body = {
        "id": "req-7",
        "inputs": [
            {
                "name": "image",
                "shape": [3],
                "datatype": "BYTES",
                "data": [base64.b64encode(i).decode() for i in images],
            }
        ],
    }
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"] == "req-7" and result["model_name"] == "tiny" and result["model_version"] == "1"
    (output,) = result["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "FP32" and output["shape"] == [3, 3]
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(3, 3).sum(1), 1.0, atol=1e-5)


def test_binary_image_input_and_binary_output(client):
    images = [class_image(label, 700 + label) for label in (2, 1)]
    raw = serialize_bytes(images)
    header = {
        "inputs": [
            {"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    content, headers = _binary_request(header, raw)
    response = client.post("/v2/models/tiny/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    meta, tail = _split(response)
    (output,) = meta["outputs"]
    assert output["parameters"]["binary_data_size"] == len(tail) == 2 * 3 * 4
    probabilities = np.frombuffer(tail, dtype="<f4").reshape(2, 3)
    json_result = client.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(i).decode() for i in images],
                }
            ]
        },
    ).json()
    np.testing.assert_allclose(probabilities.ravel(), json_result["outputs"][0]["data"], atol=1e-6)


def test_pixels_input_in_binary_matches_the_same_pixels_in_json(client):
    pixels = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    header = {
        "inputs": [
            {
                "name": "pixels",
                "shape": [2, 3, 16, 16],
                "datatype": "FP32",
                "parameters": {"binary_data_size": pixels.nbytes},
            }
        ]
    }
    content, headers = _binary_request(header, pixels.astype("<f4").tobytes())
    binary_result = client.post("/v2/models/tiny/infer", content=content, headers=headers).json()
    json_result = client.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [2, 3, 16, 16],
                    "datatype": "FP32",
                    "data": pixels.ravel().tolist(),
                }
            ]
        },
    ).json()
    np.testing.assert_allclose(
        binary_result["outputs"][0]["data"], json_result["outputs"][0]["data"], atol=1e-6
    )


def test_classification_extension_returns_score_index_label_strings(client):
    image = class_image(1, 800)
    body = {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    (output,) = client.post("/v2/models/tiny/infer", json=body).json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 2]
    score, index, label = output["data"][0].split(":")
    assert label == f"class_{index}" and 0.0 < float(score) <= 1.0
    assert float(output["data"][0].split(":")[0]) >= float(output["data"][1].split(":")[0])


_CLAIMS_9_BYTES = (
    b'{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}'
)


def _image_input(data: str = "aGk=") -> dict:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}]}


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{", {}, 400, "not valid JSON"),
        (json.dumps({"inputs": []}).encode(), {}, 400, 'non-empty "inputs"'),
        (
            json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode(),
            {},
            400,
            "exactly one input",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0] * 192}]}
            ).encode(),
            {},
            400,
            "must be FP32 of shape [N, 3, 16, 16]",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [1, 2]}]}
            ).encode(),
            {},
            400,
            "do not fit shape",
        ),
        (json.dumps(_image_input("!!")).encode(), {}, 400, "base64"),
        (json.dumps(_image_input()).encode(), {}, 400, "image 0: not a decodable image"),
        (
            json.dumps({**_image_input(), "outputs": [{"name": "logits"}]}).encode(),
            {},
            400,
            "unknown output 'logits'",
        ),
        (
            _CLAIMS_9_BYTES,
            {"Inference-Header-Content-Length": str(len(_CLAIMS_9_BYTES))},
            400,
            "binary_data_size 9 does not fit",
        ),
        (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "does not fit a body of 2 bytes"),
    ],
    ids=[
        "bad-json",
        "no-inputs",
        "unknown-input",
        "wrong-shape",
        "too-few-values",
        "bad-base64",
        "not-an-image",
        "unknown-output",
        "binary-size",
        "header-length",
    ],
)
def test_bad_infer_requests_are_400_with_a_message(client, body, headers, status, message):
    response = client.post(
        "/v2/models/tiny/infer", content=body, headers={"content-type": "application/json", **headers}
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_truncated_binary_bytes_element_is_400(client):
    raw = struct.pack("<I", 100) + b"short"
    header = {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
        ]
    }
    content, headers = _binary_request(header, raw)
    response = client.post("/v2/models/tiny/infer", content=content, headers=headers)
    assert response.status_code == 400
    assert "runs past the end" in response.json()["error"]


def test_unknown_model_is_404_in_v2_too(client):
    response = client.post("/v2/models/nope/infer", json=_image_input())
    assert response.status_code == 404
    assert client.get("/v2/models/tiny/versions/4/ready").status_code == 404


def test_non_object_parameters_are_400_not_500(client):
    body = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="], "parameters": 5}]
    }
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 400
    assert "parameters must be an object" in response.json()["error"]
    response = client.post(
        "/v2/models/tiny/infer",
        json={
            **body,
            "inputs": [{**body["inputs"][0], "parameters": None}],
            "parameters": {"timeout": -1},
        },
    )
    assert response.status_code == 400
    assert "timeout must be a positive integer of microseconds" in response.json()["error"]


def test_unsupported_content_encoding_is_415(client):
    response = client.post("/v2/models/tiny/infer", content=b"x", headers={"content-encoding": "br"})
    assert response.status_code == 415


def test_a_deadline_from_the_timeout_parameter_applies(client, monkeypatch):
    import service.worker as worker_module

    seen = []
    original = worker_module.ModelWorker.predict_images

    async def spy(self, images, timeout_s=None, timings=None, arrived_at=None):
        seen.append(timeout_s)
        return await original(self, images, timeout_s, timings, arrived_at)

    monkeypatch.setattr(worker_module.ModelWorker, "predict_images", spy)
    body = {
        "parameters": {"timeout": 250_000},
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(class_image(0)).decode()],
            }
        ],
    }
    assert client.post("/v2/models/tiny/infer", json=body).status_code == 200
    assert seen == [0.25]
